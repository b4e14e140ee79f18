/*
 * edge_run.h: C API of edge-run, a runtime for quantized GGUF language models with LoRA adapters.
 *
 * Link: libedge_run.a (cargo build --release --lib; target/release/libedge_run.a), e.g.
 *     cc -Iinclude app.c target/release/libedge_run.a -lpthread -ldl -lm -o app
 * This file is written by hand; tests/capi.rs checks it against src/capi/ (every function, its
 * parameter and return types, every status code, the layout of every struct).
 *
 * Status codes
 *   Every function except er_version, er_status_name and er_last_error returns an int: ER_OK (0) or an
 *   ER_ERR_* code. Results are written through out-pointers, only on success unless stated otherwise.
 *   After a failure, er_last_error() returns a message naming what was wrong (file, field, value).
 *
 * Ownership
 *   - er_model_open / er_adapter_open / er_session_new / er_session_adapter_control return handles the
 *     caller owns and releases with the matching er_*_free. Freeing NULL is a no-op (returns ER_OK).
 *   - Objects keep what they use alive: a session keeps its model, a session applying an adapter keeps
 *     that adapter. So freeing a model while sessions use it, or an adapter while a session applies it,
 *     is safe; the memory is released when the last user is freed.
 *   - Strings returned by er_version and er_status_name are static. The string returned by
 *     er_last_error belongs to the library and stays valid until the next er_* call on the same thread.
 *   - All other buffers are the caller's: the library writes into them and keeps no pointer to them.
 *
 * Handle checking
 *   Every live handle is recorded in a table that each call consults before touching the handle, so a
 *   freed handle, a double free, a handle of another kind or a made-up pointer gives
 *   ER_ERR_INVALID_HANDLE instead of memory corruption. This is best effort: once the allocator reuses
 *   a freed handle's address for a new handle of the same kind, the stale pointer names the new object.
 *
 * Thread safety
 *   - er_model, er_adapter and er_adapter_control handles are immutable or internally synchronized:
 *     any number of threads may use them at once (tokenize, open adapters, create sessions ...).
 *   - An er_session is used by one thread at a time (it may move between threads). A call that
 *     enters a session another thread is inside of fails with ER_ERR_BUSY; it does not wait.
 *   - To change a session's adapters from another thread while it generates, obtain an
 *     er_adapter_control with er_session_adapter_control and call er_adapter_control_set from any
 *     thread; the new set applies from the start of the session's next er_eval (never mid-token).
 *   - Caught internal errors (ER_ERR_PANIC) poison the session they happened in: afterwards every call
 *     on it fails with ER_ERR_PANIC except er_session_free.
 *
 * Pointer arguments
 *   A required pointer that is NULL gives ER_ERR_NULL. Non-NULL pointers must be valid for the access
 *   described (e.g. n readable int32_t); the library cannot check buffer sizes beyond the counts given.
 *   An output buffer may be NULL when its capacity is 0 (to ask for the needed size).
 */
#ifndef EDGE_RUN_H
#define EDGE_RUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------- status codes */
#define ER_OK 0
#define ER_ERR_NULL 1                /* a required pointer argument is NULL */
#define ER_ERR_INVALID_HANDLE 2      /* handle freed, never created, or of the wrong kind */
#define ER_ERR_IO 3                  /* the OS refused to open, map or read a file */
#define ER_ERR_FORMAT 4              /* a file is malformed */
#define ER_ERR_UNSUPPORTED 5         /* well-formed but not implemented (architecture, tensor type ...) */
#define ER_ERR_INVALID_ARGUMENT 6    /* a value out of range or not fitting the model / session */
#define ER_ERR_BUFFER_TOO_SMALL 7    /* output buffer too small; the needed count was written */
#define ER_ERR_TOKEN_OUT_OF_RANGE 8  /* a token id outside 0..n_vocab-1 */
#define ER_ERR_CONTEXT_FULL 9        /* the tokens do not fit in the rest of the context */
#define ER_ERR_NO_LOGITS 10          /* logits / sampling before any successful er_eval */
#define ER_ERR_BUSY 11               /* the session is in use by another thread */
#define ER_ERR_PANIC 12              /* internal error caught; the session is unusable */

/* ---------------------------------------------------------------------------------- types */
typedef struct er_model er_model;                     /* a memory-mapped GGUF model */
typedef struct er_adapter er_adapter;                 /* a loaded LoRA adapter */
typedef struct er_session er_session;                 /* KV cache + buffers + sampler */
typedef struct er_adapter_control er_adapter_control; /* sets a session's adapters from any thread */
typedef struct er_control_vector er_control_vector;   /* per-block additions to the residual stream */

typedef struct er_model_info {
    size_t n_vocab;
    size_t n_ctx_train;
    size_t n_embd;
    size_t n_layer;
    size_t n_head;
    size_t n_head_kv;
    size_t n_ff;
    int32_t bos;     /* beginning-of-sequence token, -1 if none */
    int32_t eos;     /* end-of-sequence token, -1 if none */
    int32_t add_bos; /* 1: start prompts with bos (er_tokenize does not add it) */
} er_model_info;

typedef struct er_session_params {
    size_t n_ctx;        /* context length in tokens, > 0 */
    size_t n_batch;      /* most tokens per forward pass, > 0 */
    size_t n_threads;    /* worker threads incl. the caller's; 0 = one per physical core */
    size_t max_adapters; /* most adapters applied at once, <= 8 */
    size_t max_rank;     /* largest LoRA rank of an applied adapter, <= 4096 */
    int32_t type_k;      /* how the KV cache stores keys: ER_KV_F16 (default), ER_KV_F32, ER_KV_Q8_0 */
    int32_t type_v;      /* how the KV cache stores values (same choices) */
} er_session_params;

/* KV cache types (er_session_params.type_k / type_v). f16 halves the f32 cache; q8_0 (8-bit with an
 * f16 scale per 32 values) halves it again and needs a head size that is a multiple of 32. */
#define ER_KV_F16 0
#define ER_KV_F32 1
#define ER_KV_Q8_0 2

typedef struct er_sampling_params {
    float temperature;      /* <= 0: greedy */
    uint32_t top_k;         /* 0 disables */
    float top_p;            /* 1 disables; in (0, 1] */
    float min_p;            /* 0 disables; in [0, 1] */
    float repeat_penalty;   /* 1 disables; > 0 */
    uint32_t repeat_last_n; /* recent tokens the penalty looks at, <= the session's n_ctx */
    uint64_t seed;          /* same seed, same tokens */
} er_sampling_params;

/* ---------------------------------------------------------------------------------- strings */
/* Library version, e.g. "0.1.0" (static). */
const char* er_version(void);
/* Symbolic name of a status code, e.g. "ER_ERR_NULL"; "ER_UNKNOWN" otherwise (static). */
const char* er_status_name(int code);
/* Message of the last failed call on this thread, "" after a success. Never NULL. Valid until the
 * next er_* call on this thread. */
const char* er_last_error(void);

/* ---------------------------------------------------------------------------------- models */
/* Map and validate a GGUF model (read-only; the file must stay in place while mapped). */
int er_model_open(const char* path, er_model** out);
/* Release a model handle (sessions and adapters made from it stay valid). NULL: no-op. */
int er_model_free(er_model* model);
int er_model_n_vocab(const er_model* model, size_t* out);
int er_model_get_info(const er_model* model, er_model_info* out);
/* *out = 1 if token ends generation (EOS, EOT, end-of-turn tokens such as <|im_end|>), else 0. */
int er_token_is_eog(const er_model* model, int32_t token, int* out);

/* Tokenize len bytes of UTF-8 text (no NUL needed; no BOS added; text may be NULL if len is 0).
 * parse_special != 0: the text of control tokens (e.g. "<|im_start|>") becomes that token.
 * *n_out = the number of tokens, also on ER_ERR_BUFFER_TOO_SMALL (cap too small; out untouched). */
int er_tokenize(const er_model* model, const char* text, size_t len, int parse_special, int32_t* out, size_t cap,
                size_t* n_out);
/* Raw bytes of one token (control tokens as their text). Concatenating the pieces of a sequence gives
 * its text; one piece may hold part of a multi-byte UTF-8 character. *n = the piece's length, also on
 * ER_ERR_BUFFER_TOO_SMALL. A NUL is appended when cap > *n. */
int er_detokenize(const er_model* model, int32_t token, char* buf, size_t cap, size_t* n);

/* ---------------------------------------------------------------------------------- adapters */
/* Load a LoRA adapter made for model: a GGUF adapter, a PEFT directory or its .safetensors file. */
int er_adapter_open(const er_model* model, const char* path, er_adapter** out);
/* Release an adapter handle; sessions applying it keep it alive. NULL: no-op. */
int er_adapter_free(er_adapter* adapter);
/* An activated LoRA (aLoRA) applies only from the last occurrence of its invocation tokens in the
 * context on (the positions before it stay the base model's, so its cache is reused when the aLoRA is
 * switched on). *n_out = the number of invocation tokens (0: a plain LoRA), also on
 * ER_ERR_BUFFER_TOO_SMALL (out untouched); out may be NULL if cap is 0. */
int er_adapter_invocation_tokens(const er_adapter* adapter, int32_t* out, size_t cap, size_t* n_out);

/* ---------------------------------------------------------------------------------- sessions */
/* Defaults: n_ctx 2048, n_batch 64, n_threads 0 (auto), max_adapters 8, max_rank 64, f16 KV. */
int er_session_params_default(er_session_params* out);
/* Create a session on model (allocates all its memory now; nothing is allocated per token). */
int er_session_new(const er_model* model, const er_session_params* params, er_session** out);
/* Release a session. NULL: no-op. ER_ERR_BUSY (not freed) if another thread is inside a call on it. */
int er_session_free(er_session* sess);
/* Forget the context and the last logits; the sampler restarts from its seed. */
int er_session_reset(er_session* sess);
/* *out = number of tokens in the context. */
int er_session_n_past(er_session* sess, size_t* out);

/* Apply adapters[i] with user scale scales[i] (y = Wx + scale * (alpha/r) * B(Ax)) from the next
 * er_eval on; n = 0 removes every adapter (adapters and scales may then be NULL); n <= max_adapters.
 * On error the previous set stays. Tokens already in the context keep the values computed with the
 * adapters of their time (re-evaluate them to change that). */
int er_session_set_adapters(er_session* sess, const er_adapter* const* adapters, const float* scales, size_t n);
/* A handle to change this session's adapters from any thread (free with er_adapter_control_free; it
 * may outlive the session, then it has no effect). */
int er_session_adapter_control(er_session* sess, er_adapter_control** out);
/* As er_session_set_adapters, callable from any thread at any time; applies from the next er_eval. */
int er_adapter_control_set(const er_adapter_control* ctl, const er_adapter* const* adapters, const float* scales,
                           size_t n);
int er_adapter_control_free(er_adapter_control* ctl);

/* ---------------------------------------------------------------------------------- control vectors */
/* Sum the llama.cpp control-vector files paths[i] (GGUF, tensors direction.N: F32 or F16, n_embd
 * values) times scales[i] (scales NULL: all 1) for model; direction.N is added to every position's
 * residual stream after block N (0-based, N in 1..n_layer-1). Only blocks layer_start..=layer_end are
 * kept (<= 0: the first / last such block). n >= 1. ER_ERR_FORMAT names the file and field. */
int er_control_vector_open(const er_model* model, const char* const* paths, const float* scales, size_t n,
                           int32_t layer_start, int32_t layer_end, er_control_vector** out);
/* Release a control-vector handle; sessions applying it keep it alive. NULL: no-op. */
int er_control_vector_free(er_control_vector* cv);
/* Add cv from the next er_eval on (NULL clears it; independent of the adapters). Tokens already in
 * the context keep the values computed with the control vector of their time. A state file does not
 * record it: while one is set, er_session_save and er_session_load fail with ER_ERR_INVALID_ARGUMENT. */
int er_session_set_control_vector(er_session* sess, const er_control_vector* cv);

/* Save the context (tokens, KV cache rows, the last logits) to the file path. The file records the
 * model (a hash of its GGUF header), the KV types and the adapter set with scales it is only valid with,
 * and a checksum. */
int er_session_save(er_session* sess, const char* path);
/* Replace the context with the one saved in path. Refused (the session unchanged) if the file is
 * corrupt (ER_ERR_FORMAT), unreadable (ER_ERR_IO), or saved with another model, KV type, adapter set
 * or scale, or more tokens than n_ctx (ER_ERR_INVALID_ARGUMENT; er_last_error names the difference).
 * Afterwards er_logits gives the saved logits (bit-identical to evaluating the tokens again) and the
 * sampler restarts from its seed with the restored tokens in its history. */
int er_session_load(er_session* sess, const char* path);

/* Evaluate n > 0 tokens after the context (in chunks of n_batch). On any error nothing changed:
 * ER_ERR_TOKEN_OUT_OF_RANGE, ER_ERR_CONTEXT_FULL (n_past + n > n_ctx) ... */
int er_eval(er_session* sess, const int32_t* tokens, size_t n);
/* Copy the logits of the last evaluated position (n_vocab floats) to out. *n_written = n_vocab, also
 * on ER_ERR_BUFFER_TOO_SMALL (cap < n_vocab). ER_ERR_NO_LOGITS before the first er_eval. */
int er_logits(er_session* sess, float* out, size_t cap, size_t* n_written);
/* *out = the most likely next token (lowest id on ties). */
int er_sample_greedy(er_session* sess, int32_t* out);

/* Defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1, repeat_last_n 64,
 * seed 0. */
int er_sampling_params_default(er_sampling_params* out);
/* Give the session a sampler (replacing any previous one and its history). From then on every token
 * passed to er_eval enters its repetition history. */
int er_session_set_sampling(er_session* sess, const er_sampling_params* params);
/* *out = a token drawn from the last logits with the session's sampler. It enters the history when
 * it is passed to er_eval. ER_ERR_INVALID_ARGUMENT if no sampler was set. */
int er_sample(er_session* sess, int32_t* out);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_RUN_H */
