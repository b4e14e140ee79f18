"""Drives `edge-run serve` with the official `openai` Python package (run by tests/serve.rs).

argv: base URL, model name ("BASE:ADAPTER"), prompt, max tokens, the CLI's greedy answer. Checks that the
non-streamed and the streamed chat completions equal it, that usage is reported, and that an unknown adapter
raises the client's NotFoundError. Prints "ok" last.
"""
import sys

import openai

url, model, prompt, n, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
msgs = [{"role": "user", "content": prompt}]

r = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=n)
got = r.choices[0].message.content
assert got == want, f"non-streamed: {got!r} != {want!r}"
assert r.usage.completion_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage

parts, usage = [], None
for chunk in client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=n, stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(parts) == want, f"streamed: {''.join(parts)!r} != {want!r}"
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

names = [m.id for m in client.models.list().data]
assert model in names, names
try:
    client.chat.completions.create(model=model + "-missing", messages=msgs, max_tokens=2)
    raise AssertionError("an unknown adapter was accepted")
except openai.NotFoundError as e:
    assert "missing" in str(e), e
print("ok")
