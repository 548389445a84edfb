"""H100 probe for the knowledge seed files: API checks across Triton versions and a few
rms_norm / softmax layout sweeps, whose numbers the bundled knowledge files (src/kforge/gen/knowledge/*.md)
cite. Standalone: torch + triton only; timed with do_bench (exploratory, not a kforge claim).
    OUT=/tmp/out python3 benchmarks/knowledge_probe.py   -> $OUT/probe-h100.json (committed as
    benchmarks/results/h100/knowledge-probe.json)"""

import json
import os

import torch
import triton
import triton.language as tl
from triton.testing import do_bench
from triton.language.extra import libdevice

OUT = os.environ.get("OUT", "/tmp/out")
dev = torch.device("cuda")
SMS = 0  # the GPU's multiprocessor count, set by main()
res: dict = {"info": {}, "api": {}, "rms": [], "softmax": []}  # what main() measures and writes


@triton.jit
def copy_blockptr(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    p = tl.make_block_ptr(x_ptr, (n,), (1,), (0,), (BLOCK,), (0,))
    x = tl.load(p, boundary_check=(0,))
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, x, mask=offs < n)


@triton.jit
def libdev_rsqrt(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, libdevice.rsqrt(tl.load(x_ptr + offs)))


@triton.jit
def tdesc_copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    d = tl.make_tensor_descriptor(x_ptr, shape=[n], strides=[1], block_shape=[BLOCK])
    x = d.load([0])
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, x)


def api(name, fn):
    try:
        fn()
        torch.cuda.synchronize()
        res["api"][name] = "ok"
    except Exception as e:
        res["api"][name] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
    print("api", name, res["api"][name], flush=True)


@triton.jit
def rms_rows(x_ptr, w_ptr, y_ptr, rows, hidden, eps, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, BLOCK)[None, :]
    m = (r < rows) & (c < hidden)
    xv = tl.load(x_ptr + r * hidden + c, mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=1) / hidden + eps)
    w = tl.load(w_ptr + c, mask=c < hidden, other=0.0).to(tl.float32)
    tl.store(y_ptr + r * hidden + c, (xv * rstd[:, None] * w).to(y_ptr.dtype.element_ty), mask=m)


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3  # us


def rms_case(rows, hidden, ROWS, warps):
    xx = torch.randn(rows, hidden, device=dev, dtype=torch.bfloat16)
    w = torch.randn(hidden, device=dev, dtype=torch.bfloat16)
    yy = torch.empty_like(xx)
    BLOCK = triton.next_power_of_2(hidden)
    grid = (triton.cdiv(rows, ROWS),)
    def f():
        return rms_rows[grid](xx, w, yy, rows, hidden, 1e-6, ROWS=ROWS, BLOCK=BLOCK, num_warps=warps)
    f()
    ref = torch.rms_norm(xx.float(), (hidden,), w.float(), 1e-6)
    err = (yy.float() - ref).abs().max().item()
    t = bench(f)
    v = bench(lambda: torch.rms_norm(xx, (hidden,), w, 1e-6))
    gbps = (2 * rows * hidden * 2) / t / 1e3
    row = {"rows": rows, "hidden": hidden, "ROWS": ROWS, "warps": warps, "us": round(t, 2), "vendor_us": round(v, 2),
           "gbps": round(gbps), "err": err}
    res["rms"].append(row)
    print("rms", row, flush=True)


@triton.jit
def sm_rows(x_ptr, y_ptr, rows, cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, BLOCK)[None, :]
    m = (r < rows) & (c < cols)
    xv = tl.load(x_ptr + r * cols + c, mask=m, other=-float("inf")).to(tl.float32)
    mx = tl.max(xv, axis=1)
    mx = tl.where(mx == -float("inf"), 0.0, mx)
    e = tl.exp(xv - mx[:, None])
    tl.store(y_ptr + r * cols + c, (e / tl.sum(e, axis=1)[:, None]).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def sm_online(x_ptr, y_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        xv = tl.load(x_ptr + row * cols + start + offs, mask=start + offs < cols, other=-float("inf")).to(tl.float32)
        mn = tl.maximum(m, xv)
        base = tl.where(mn == -float("inf"), 0.0, mn)
        s = s * tl.exp(m - base) + tl.exp(xv - base)
        m = mn
    rm = tl.max(m, axis=0)
    base = tl.where(rm == -float("inf"), 0.0, rm)
    total = tl.sum(s * tl.exp(m - base), axis=0)
    for start in range(0, cols, BLOCK):
        mask = start + offs < cols
        xv = tl.load(x_ptr + row * cols + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        tl.store(y_ptr + row * cols + start + offs, (tl.exp(xv - base) / total).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def sm_split_stats(x_ptr, m_ptr, s_ptr, cols, chunk, NCHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    lo = ch * chunk
    for start in range(lo, lo + chunk, BLOCK):
        mask = (start + offs < cols) & (start + offs < lo + chunk)
        xv = tl.load(x_ptr + row * cols + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        mn = tl.maximum(m, xv)
        base = tl.where(mn == -float("inf"), 0.0, mn)
        s = s * tl.exp(m - base) + tl.exp(xv - base)
        m = mn
    cm = tl.max(m, axis=0)
    base = tl.where(cm == -float("inf"), 0.0, cm)
    tl.store(m_ptr + row * NCHUNK + ch, cm)
    tl.store(s_ptr + row * NCHUNK + ch, tl.sum(s * tl.exp(m - base), axis=0))


@triton.jit
def sm_split_write(x_ptr, y_ptr, m_ptr, s_ptr, cols, chunk, NCHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    k = tl.arange(0, NCHUNK)
    pm = tl.load(m_ptr + row * NCHUNK + k)
    ps = tl.load(s_ptr + row * NCHUNK + k)
    M = tl.max(pm, axis=0)
    base = tl.where(M == -float("inf"), 0.0, M)
    S = tl.sum(ps * tl.exp(pm - base), axis=0)
    offs = tl.arange(0, BLOCK)
    lo = ch * chunk
    for start in range(lo, lo + chunk, BLOCK):
        mask = (start + offs < cols) & (start + offs < lo + chunk)
        xv = tl.load(x_ptr + row * cols + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        tl.store(y_ptr + row * cols + start + offs, (tl.exp(xv - base) / S).to(y_ptr.dtype.element_ty), mask=mask)


def sm_case(kind, rows, cols, **kw):
    xx = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16) * 2
    yy = torch.empty_like(xx)
    if kind == "rows":
        ROWS, warps = kw["ROWS"], kw["warps"]
        BLOCK = triton.next_power_of_2(cols)
        def f():
            return sm_rows[(triton.cdiv(rows, ROWS),)](xx, yy, rows, cols, ROWS=ROWS, BLOCK=BLOCK, num_warps=warps)
    elif kind == "online":
        BLOCK, warps = kw["BLOCK"], kw["warps"]
        def f():
            return sm_online[(rows,)](xx, yy, cols, BLOCK=BLOCK, num_warps=warps)
    else:
        BLOCK, warps, NCHUNK = kw["BLOCK"], kw["warps"], kw["NCHUNK"]
        chunk = triton.cdiv(triton.cdiv(cols, NCHUNK), BLOCK) * BLOCK
        pm = torch.empty(rows, NCHUNK, device=dev, dtype=torch.float32)
        ps = torch.empty_like(pm)

        def f():
            sm_split_stats[(rows, NCHUNK)](xx, pm, ps, cols, chunk, NCHUNK=NCHUNK, BLOCK=BLOCK, num_warps=warps)
            sm_split_write[(rows, NCHUNK)](xx, yy, pm, ps, cols, chunk, NCHUNK=NCHUNK, BLOCK=BLOCK, num_warps=warps)
    f()
    ref = torch.softmax(xx.float(), -1)
    err = (yy.float() - ref).abs().max().item()
    t = bench(f)
    v = bench(lambda: xx.softmax(-1))
    row = {"kind": kind, "rows": rows, "cols": cols, **kw, "us": round(t, 2), "vendor_us": round(v, 2),
           "gbps": round(2 * rows * cols * 2 / t / 1e3), "err": err}
    res["softmax"].append(row)
    print("softmax", row, flush=True)


def safe(*a, **k):
    try:
        sm_case(*a, **k)
    except Exception as e:
        print("softmax fail", a, k, type(e).__name__, str(e)[:200], flush=True)


def main():
    global SMS
    props = torch.cuda.get_device_properties(0)
    SMS = props.multi_processor_count
    info = {"gpu": props.name, "sms": SMS, "torch": torch.__version__, "triton": triton.__version__}
    print(info, flush=True)
    res["info"] = info
    x = torch.rand(1024, device=dev) + 1
    y = torch.empty_like(x)
    api("make_block_ptr", lambda: copy_blockptr[(1,)](x, y, 1024, BLOCK=256))
    api("libdevice.rsqrt", lambda: libdev_rsqrt[(1,)](x, y, BLOCK=256))
    api("make_tensor_descriptor_no_allocator", lambda: tdesc_copy[(1,)](x, y, 1024, BLOCK=256))
    for rows, hidden in ((4096, 4096), (16384, 8192), (32, 4096)):
        for warps in (1, 2, 4, 8, 16, 32):
            try:
                rms_case(rows, hidden, 1, warps)
            except Exception as e:
                print("rms fail", rows, hidden, warps, type(e).__name__, str(e)[:200], flush=True)
    for rows, hidden in ((65536, 128), (65536, 512), (16384, 1024)):
        for ROWS in (1, 2, 4, 8, 16):
            for warps in (1, 4, 8):
                try:
                    rms_case(rows, hidden, ROWS, warps)
                except Exception as e:
                    print("rms fail", rows, hidden, ROWS, warps, type(e).__name__, str(e)[:200], flush=True)
    for rows, cols in ((4096, 4096), (4096, 32768)):
        for warps in (2, 4, 8, 16, 32):
            safe("rows", rows, cols, ROWS=1, warps=warps)
    for ROWS in (1, 2, 4, 8, 16, 32):
        for warps in (1, 4, 8):
            safe("rows", 65536, 128, ROWS=ROWS, warps=warps)
    for rows, cols in ((32, 151936), (1, 32000), (64, 128256), (4096, 32768)):
        for BLOCK, warps in ((1024, 4), (2048, 8), (4096, 8), (4096, 16)):
            safe("online", rows, cols, BLOCK=BLOCK, warps=warps)
        for NCHUNK in (8, 16, 32, 64):
            if rows * NCHUNK > 64 * SMS:
                continue
            for BLOCK, warps in ((1024, 4), (2048, 8)):
                safe("split", rows, cols, BLOCK=BLOCK, warps=warps, NCHUNK=NCHUNK)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "probe.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
