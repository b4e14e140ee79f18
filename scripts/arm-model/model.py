#!/usr/bin/env python3
"""The Raspberry Pi cost model (driven by scripts/arm-model.sh, which builds the two harnesses).

For every weight type, CPU model and workload it runs one kernel call of each side under qemu-user,
takes the executed instruction trace (trace.py) and gives it to llvm-mca; the result is cycles per
256 weight·token products.

CPU models (llvm-mca 19):
  cortex-a72  -mcpu=cortex-a72 (the Cortex-A57 scheduling model; Raspberry Pi 4), no dotprod;
              llama.cpp built with -march=armv8-a.
  cortex-a76  -mcpu=neoverse-n1 -mattr=+dotprod (the Neoverse N1 is derived from the Cortex-A76;
              llvm-mca 19's own cortex-a76 model is the A57 one); llama.cpp built with
              -march=armv8.2-a+dotprod.

What llama.cpp runs (ggml-cpu, read from its code paths and #if conditions):
  Pi 4 (no dotprod): no repacked layout (every ggml_repack_get_optimal_repack_type branch for ARM
    needs dotprod or i8mm), llamafile's quantized tinyBLAS needs __ARM_FEATURE_DOTPROD: decode and
    prefill both call ggml_vec_dot_<type> once per (row, token), its NEON path with the SDOT
    emulation ggml_vdotq_s32 (SMULL + SADDLP + ADD).
  Pi 5 (dotprod, no i8mm): Q4_0, Q8_0 weights are repacked to 4x4 interleaved blocks and Q4_K,
    Q5_K, Q6_K to 8x4 (the CPU_REPACK buffer, on by default): decode = ggml_gemv_<type>_<layout>,
    prefill = ggml_gemm_<type>_<layout> (tokens in groups of 4, Q4_0 16 at a time in asm).
    Q4_1, Q5_0, Q5_1 have no repack and no tinyBLAS: ggml_vec_dot_<type> per (row, token), with SDOT.

Workloads (n = 1024 elements per row):
  decode   one token, 64 rows (llama.cpp: 64 vec_dot calls or one gemv over 64 rows; edge-run: one
           MatVec call);
  prefill  16 tokens × 64 rows (edge-run: one MatMul call, as the runtime makes per thread;
           llama.cpp: one gemm over 64 rows, or vec_dot per (row, token) on 16 × 16 — the same cost
           per call at any row count).
Activation quantization is outside the measured call on both sides (once per token, not per row).

Before the JSON line, a modelled decode rate (tok/s) for two small models on both boards (see
`decode_rates`): the weight matrices' cycles from the table above, against the time to stream those
weights from DRAM.

The last line of stdout is the JSON result; `edge_run` is edge-run with 8-bit activations (the same
work as llama.cpp), `edge_run_q8x2` its default q8x2 mode (activation + residual: two integer dots).
"""
import json, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
N = 1024
TYPES = ['q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0', 'q4_k', 'q5_k', 'q6_k']
REPACKED = {'q4_0', 'q8_0', 'q4_k', 'q5_k', 'q6_k'}
CPUS = {
    'cortex-a72': dict(mcpu='cortex-a72', mattr='', qemu='cortex-a72', tier='neon', ggml='a72'),
    'cortex-a76': dict(mcpu='neoverse-n1', mattr='+dotprod', qemu='max', tier='neon-dotprod', ggml='a76'),
}


def cycles(cpu, cmd):
    c = CPUS[cpu]
    args = [sys.executable, os.path.join(HERE, 'trace.py'), '--mcpu', c['mcpu'], '--qemu-cpu', c['qemu']]
    if c['mattr']:
        args += ['--mattr=' + c['mattr']]
    r = subprocess.run(args + ['--'] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit('arm-model: %s failed:\n%s' % (' '.join(cmd), r.stderr[-3000:]))
    return int(r.stdout.split()[1])


def per256(c, rows, toks):
    return round(c * 256.0 / (N * rows * toks), 2)


# Bytes per weight of each type (ggml block size / elements per block).
BYTES = {'q4_0': 18 / 32, 'q4_1': 20 / 32, 'q5_0': 22 / 32, 'q5_1': 24 / 32, 'q8_0': 34 / 32,
         'q4_k': 144 / 256, 'q5_k': 176 / 256, 'q6_k': 210 / 256}

# Weights per decoded token by type: every 2-D tensor of the GGUF files (the matrices of all layers,
# plus the tied embedding as the output projection).
#   SmolLM2-135M-Instruct Q4_1: 30 layers of q, o 576×576, k, v 576×192, gate, up 576×1536,
#     down 1536×576, all Q4_1; output 49152×576 Q8_0.
#   Gemma 3 270M Q4_K_M (ggml-org's gemma-3-270m GGUF): 18 layers of q 640×1024, k 640×256, gate, up
#     640×2048 (Q5_0), v 640×256 (Q8_0 in 9 layers, Q5_0 in 9), o 1024×640 (Q4_K), down 2048×640
#     (Q6_K in 9 layers, Q4_K in 9); output 262144×640 Q8_0.
MODELS = {
    'SmolLM2-135M Q4_1': {'q4_1': 106168320, 'q8_0': 28311552},
    'Gemma 3 270M Q4_K_M': {'q8_0': 169246720, 'q5_0': 63406080, 'q4_k': 23592960, 'q6_k': 11796480},
}

# The boards: CPU model, clock, cores, and a DRAM bandwidth a decode can count on (the low end of
# what the boards achieve in streaming reads: Pi 4 LPDDR4 ≈ 4–5 GB/s, Pi 5 LPDDR4X ≈ 8–10 GB/s).
BOARDS = [
    ('Pi 4', 'cortex-a72', 1.8e9, 4, 4e9),
    ('Pi 5', 'cortex-a76', 2.4e9, 4, 8e9),
]


def decode_rates(res):
    """Modelled decode per (model, board): the weight bytes a token reads, the DRAM limit (tok/s
    when streaming those bytes is all a token costs), each side's one-core compute limit (the
    decode cycles per 256 products of each type at the board's clock) and each side's modelled
    tok/s with 1 and with all cores: a token takes the longer of the compute (rows split evenly
    over the threads) and the DRAM time. Attention, norms, activation quantization and thread
    synchronization are left out on both sides."""
    rows = []
    for model, types in MODELS.items():
        nbytes = sum(n * BYTES[ty] for ty, n in types.items())
        for board, cpu, hz, cores, bw in BOARDS:
            r = {'model': model, 'board': board, 'mb': nbytes / 1e6, 'dram': bw / nbytes}
            for side in ('edge_run', 'llama_cpp', 'edge_run_q8x2'):
                cyc = sum(n / 256.0 * res[cpu][ty]['decode'][side] for ty, n in types.items())
                r[side + '_core'] = hz / cyc
                r[side + '_1t'] = min(hz / cyc, bw / nbytes)
                r[side + '_%dt' % cores] = min(cores * hz / cyc, bw / nbytes)
            rows.append(r)
    return rows


def main():
    ggml_dir, edge = sys.argv[1], sys.argv[2]
    # Every (cpu, type, side, workload) is one qemu run + one llvm-mca run: run them in parallel.
    jobs = {}
    for cpu, c in CPUS.items():
        gh = os.path.join(ggml_dir, 'ggml_harness_' + c['ggml'])
        for ty in TYPES:
            rep = cpu == 'cortex-a76' and ty in REPACKED
            g = {'decode': ('gemv' if rep else 'vecdot', 64, 1),
                 'prefill': ('gemm', 64, 16) if rep else ('vecdot', 16, 16)}
            for w, (kind, rows, toks) in g.items():
                jobs[(cpu, ty, w, 'llama_cpp')] = (cpu, [gh, kind, ty, str(N), str(rows), str(toks)], rows, toks)
            for key, kind, rows, toks in [('decode', 'matvec', 64, 1), ('prefill', 'matmul', 64, 16)]:
                for name, k in [('edge_run', kind), ('edge_run_q8x2', kind + '2')]:
                    cmd = [edge, k, ty, str(N), str(rows), str(toks), c['tier']]
                    jobs[(cpu, ty, key, name)] = (cpu, cmd, rows, toks)
    with ThreadPoolExecutor(max_workers=int(os.environ.get('ARM_MODEL_JOBS', os.cpu_count() or 2))) as ex:
        futs = {k: ex.submit(lambda j: per256(cycles(j[0], j[1]), j[2], j[3]), j) for k, j in jobs.items()}
        val = {k: f.result() for k, f in futs.items()}
    res = {}
    for cpu in CPUS:
        res[cpu] = {}
        for ty in TYPES:
            rep = cpu == 'cortex-a76' and ty in REPACKED
            res[cpu][ty] = {}
            for w in ('decode', 'prefill'):
                r = {n: val[(cpu, ty, w, n)] for n in ('edge_run', 'llama_cpp', 'edge_run_q8x2')}
                r['llama_cpp_kernel'] = ('ggml_gemv' if w == 'decode' else 'ggml_gemm') if rep else 'ggml_vec_dot'
                res[cpu][ty][w] = r
                print('%-10s %-5s %-7s edge-run %7.2f  llama.cpp %7.2f  ratio %.2f  (q8x2 %7.2f; llama.cpp %s)' % (
                    cpu, ty, w, r['edge_run'], r['llama_cpp'], r['edge_run'] / r['llama_cpp'],
                    r['edge_run_q8x2'], r['llama_cpp_kernel']))
    print()
    print('Modelled decode tok/s, --act-quant q8, weight matrices only (Pi 4: Cortex-A72 model, 1.8 GHz, '
          '4 GB/s; Pi 5: Neoverse N1 model, 2.4 GHz, 8 GB/s; edge-run / llama.cpp; last two columns: '
          "edge-run's default q8x2 mode)")
    print('%-20s %-5s %8s %7s %15s %15s %15s %10s %8s' % (
        'model', 'board', 'MB/token', 'DRAM', '1-core compute', '1 thread', '4 threads', 'q8x2 core', 'q8x2 1t'))
    for r in decode_rates(res):
        pair = lambda k: '%6.1f / %6.1f' % (r['edge_run_' + k], r['llama_cpp_' + k])
        print('%-20s %-5s %8.1f %7.1f %15s %15s %15s %10.1f %8.1f' % (
            r['model'], r['board'], r['mb'], r['dram'], pair('core'), pair('1t'), pair('4t'),
            r['edge_run_q8x2_core'], r['edge_run_q8x2_1t']))
    print(json.dumps(res, separators=(',', ':')))


if __name__ == '__main__':
    main()
