"""Peak RSS of llama.cpp in its own process, for the memory comparison with `edge-run bench`.

Runs pp128 + tg32 (one thread, llama.cpp's defaults otherwise) through llama-cpp-python at a given
context and KV type and prints the process's peak RSS, with the interpreter's and the library's share
before the model is loaded. Setup (builds llama.cpp; AMX off, as on machines where it faults):

    python3 -m venv /tmp/lcp && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
        /tmp/lcp/bin/pip install llama-cpp-python==0.3.16
    /tmp/lcp/bin/python scripts/llama_cpp_rss.py MODEL.gguf 4096 f16

Compare with `edge-run bench -m MODEL.gguf -c 4096 -t 1 -p 128 -n 32 -r 1 -ctk f16 -ctv f16`.
"""
import resource
import sys

interpreter = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from llama_cpp import Llama  # noqa: E402

imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model, n_ctx, kv = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ggml_type = {"f32": 0, "f16": 1, "q8_0": 8}[kv]
llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=1, type_k=ggml_type, type_v=ggml_type,
            verbose=False, flash_attn=(kv == "q8_0"))  # a quantized V cache needs flash attention
llm.eval([(i * 37 + 11) % 1000 + 100 for i in range(128)])
for i in range(32):
    llm.eval([(i * 13 + 5) % 1000 + 100])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{model} -c {n_ctx} KV {kv}: peak RSS {peak / 1024:.1f} MiB "
      f"(interpreter {interpreter / 1024:.1f} MiB, with llama-cpp-python imported {imported / 1024:.1f} MiB)")
