#!/usr/bin/env python3
"""Cycle estimate of one kernel call from its dynamic instruction trace.

Runs an aarch64 harness under qemu-user with `-d in_asm,exec,nochain` (every executed translation
block is logged, and the guest instructions of each block once), cuts the executed instruction
sequence between the harness's calls of `mark_begin` and `mark_end`, disassembles the encodings with
llvm-mc and gives the whole straight-line sequence to llvm-mca (one iteration).

Taking the executed trace instead of marked loop bodies makes the estimate independent of how the
compiler laid out the loops (nesting, rotation, unrolling, tails) and of label names, and it
includes every per-call, per-row and per-block overhead of the code as it runs for that shape.

usage: trace.py --mcpu CPU [--mattr ATTRS] --qemu-cpu QCPU [--dump FILE] -- HARNESS ARGS...
prints: <instructions> <cycles>
"""
import argparse, os, re, subprocess, sys, tempfile

LLVM = os.environ.get('LLVM_BIN', '/usr/lib/llvm-19/bin')


def parse_log(path):
    """Translation blocks {pc: [encodings]} and the executed block sequence [(pc, symbol)]."""
    tbs, seq, cur = {}, [], None
    with open(path, errors='replace') as f:
        for line in f:
            if line.startswith('IN:'):
                cur = []
                continue
            if cur is not None:
                m = re.match(r'^0x([0-9a-f]+):\s+([0-9a-f]{8})\s', line)
                if m:
                    cur.append((int(m.group(1), 16), int(m.group(2), 16)))
                    continue
                if cur:
                    tbs[cur[0][0]] = [e for _, e in cur]
                cur = None
            if line.startswith('Trace'):
                m = re.search(r'\[[0-9a-f]+/([0-9a-f]+)/', line)
                sym = line.rstrip().split()[-1] if line.rstrip().endswith(']') is False else ''
                seq.append((int(m.group(1), 16), sym))
    if cur:
        tbs[cur[0][0]] = [e for _, e in cur]
    return tbs, seq


def cut(tbs, seq, begin='mark_begin', end='mark_end'):
    out, on = [], False
    for pc, sym in seq:
        if sym == begin:
            on, out = True, []
        elif sym == end and on:
            return out
        elif on:
            out.extend(tbs[pc])
    sys.exit('trace.py: markers %s/%s not found in the trace' % (begin, end))


def disassemble(encs):
    uniq = sorted(set(encs))
    data = '\n'.join(' '.join('0x%02x' % ((w >> (8 * k)) & 255) for k in range(4)) for w in uniq)
    r = subprocess.run([LLVM + '/llvm-mc', '--disassemble', '-triple=aarch64',
                        '-mattr=+dotprod,+i8mm,+fullfp16,+bf16,+rcpc,+lse'],
                       input=data, capture_output=True, text=True)
    text = [x.strip() for x in r.stdout.splitlines() if x.strip() and not x.strip().startswith('.')]
    if len(text) != len(uniq):
        sys.exit('trace.py: llvm-mc disassembled %d of %d encodings:\n%s' % (len(text), len(uniq), r.stderr[:2000]))
    # Branch targets are PC-relative immediates; llvm-mca only needs the opcode. Calls: llvm-mca
    # gives BL/BLR a fixed 100-cycle latency ("calls are not correctly modeled"); in an executed
    # trace a call is a predicted jump that writes the link register, so it becomes an ADR to x30
    # (one integer operation, same register effect).
    text = ['adr\tx30, #4' if re.match(r'blr?\s', t) else t for t in text]
    return dict(zip(uniq, text))


def mca(instrs, mcpu, mattr):
    args = [LLVM + '/llvm-mca', '-mtriple=aarch64', '-mcpu=' + mcpu, '-iterations=1']
    if mattr:
        args.append('-mattr=' + mattr)
    r = subprocess.run(args, input='\n'.join(instrs) + '\n', capture_output=True, text=True)
    m = re.search(r'Total Cycles:\s+(\d+)', r.stdout)
    if not m:
        sys.exit('trace.py: llvm-mca failed:\n' + r.stderr[:2000])
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mcpu', required=True)
    ap.add_argument('--mattr', default='')
    ap.add_argument('--qemu-cpu', required=True)
    ap.add_argument('--qemu', default='qemu-aarch64')
    ap.add_argument('--dump')
    ap.add_argument('cmd', nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == '--' else a.cmd
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, 'qemu.log')
        env = dict(os.environ)
        r = subprocess.run([a.qemu, '-L', '/usr/aarch64-linux-gnu', '-cpu', a.qemu_cpu,
                            '-d', 'in_asm,exec,nochain', '-D', log] + cmd, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode not in (0, 1):
            sys.exit('trace.py: %s exited with %d\n%s' % (' '.join(cmd), r.returncode, r.stderr[-2000:]))
        tbs, seq = parse_log(log)
    encs = cut(tbs, seq)
    text = disassemble(encs)
    instrs = [text[e] for e in encs]
    if a.dump:
        with open(a.dump, 'w') as f:
            f.write('\n'.join(instrs) + '\n')
    print(len(instrs), mca(instrs, a.mcpu, a.mattr))


if __name__ == '__main__':
    main()
