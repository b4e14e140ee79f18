/*
 * Greedy generation through the edge-run C API, without and then with a LoRA adapter.
 *
 *   main MODEL.gguf PROMPT N_NEW [ADAPTER [SCALE]]
 *
 * Prints machine-readable lines (tests/capi.rs parses them):
 *   prompt: <ids>          the prompt's tokens (BOS first if the model asks for it)
 *   base: <ids>            greedy continuation without adapters (stops early at end-of-generation)
 *   adapter: <ids>         the same with ADAPTER at SCALE (default 1), if given
 *   text base: ...         the continuations as text
 * Exit status 0 on success, 1 on any error (with er_last_error() on stderr).
 */
#include "edge_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                     \
    do {                                                                                                \
        int rc_ = (call);                                                                               \
        if (rc_ != ER_OK) {                                                                             \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call, er_status_name(rc_), \
                    er_last_error());                                                                   \
            exit(1);                                                                                    \
        }                                                                                               \
    } while (0)

static void print_ids(const char* label, const int32_t* ids, size_t n) {
    printf("%s:", label);
    for (size_t i = 0; i < n; i++) printf(" %d", (int)ids[i]);
    printf("\n");
}

/* Print the text of a token sequence, growing the piece buffer when er_detokenize asks for more. */
static void print_text(const er_model* model, const char* label, const int32_t* ids, size_t n) {
    size_t cap = 16;
    char* buf = malloc(cap);
    printf("text %s: ", label);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        int rc = er_detokenize(model, ids[i], buf, cap, &len);
        if (rc == ER_ERR_BUFFER_TOO_SMALL) {
            cap = len + 1;
            buf = realloc(buf, cap);
            rc = er_detokenize(model, ids[i], buf, cap, &len);
        }
        CHECK(rc);
        fwrite(buf, 1, len, stdout);
    }
    printf("\n");
    free(buf);
}

/* Evaluate the prompt, then greedily pick and evaluate up to n_new tokens. Returns how many. */
static size_t generate(er_session* sess, const er_model* model, const int32_t* prompt, size_t n_prompt,
                       int32_t* out, size_t n_new) {
    size_t n = 0;
    CHECK(er_session_reset(sess));
    CHECK(er_eval(sess, prompt, n_prompt));
    while (n < n_new) {
        int32_t tok;
        int eog = 0;
        CHECK(er_sample_greedy(sess, &tok));
        CHECK(er_token_is_eog(model, tok, &eog));
        if (eog) break;
        out[n++] = tok;
        if (n == n_new) break;
        CHECK(er_eval(sess, &tok, 1));
    }
    return n;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT N_NEW [ADAPTER [SCALE]]\n", argv[0]);
        return 2;
    }
    const char* model_path = argv[1];
    const char* text = argv[2];
    size_t n_new = (size_t)strtoul(argv[3], NULL, 10);
    const char* adapter_path = argc > 4 ? argv[4] : NULL;
    float scale = argc > 5 ? strtof(argv[5], NULL) : 1.0f;

    printf("edge-run %s\n", er_version());
    er_model* model = NULL;
    CHECK(er_model_open(model_path, &model));
    er_model_info info;
    CHECK(er_model_get_info(model, &info));

    /* Tokenize: ask for the size first (cap 0), then fill. */
    size_t n_text = 0;
    int rc = er_tokenize(model, text, strlen(text), 1, NULL, 0, &n_text);
    if (rc != ER_OK && rc != ER_ERR_BUFFER_TOO_SMALL) CHECK(rc);
    size_t n_prompt = n_text + (info.add_bos ? 1 : 0);
    int32_t* prompt = malloc((n_prompt + 1) * sizeof *prompt);
    if (info.add_bos) prompt[0] = info.bos;
    CHECK(er_tokenize(model, text, strlen(text), 1, prompt + (info.add_bos ? 1 : 0), n_text, &n_text));
    print_ids("prompt", prompt, n_prompt);

    er_session_params sp;
    CHECK(er_session_params_default(&sp));
    sp.n_ctx = n_prompt + n_new + 1;
    sp.n_batch = 8;
    sp.n_threads = 2;
    er_session* sess = NULL;
    CHECK(er_session_new(model, &sp, &sess));

    int32_t* out = malloc((n_new + 1) * sizeof *out);
    size_t n = generate(sess, model, prompt, n_prompt, out, n_new);
    print_ids("base", out, n);
    print_text(model, "base", out, n);

    if (adapter_path) {
        er_adapter* adapter = NULL;
        CHECK(er_adapter_open(model, adapter_path, &adapter));
        const er_adapter* set[1] = {adapter};
        float scales[1] = {scale};
        CHECK(er_session_set_adapters(sess, set, scales, 1));
        /* The session holds the adapter while it applies it: the handle can go now. */
        CHECK(er_adapter_free(adapter));
        n = generate(sess, model, prompt, n_prompt, out, n_new);
        print_ids("adapter", out, n);
        print_text(model, "adapter", out, n);
    }

    free(out);
    free(prompt);
    CHECK(er_session_free(sess));
    CHECK(er_model_free(model));
    return 0;
}
