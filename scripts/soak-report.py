#!/usr/bin/env python3
"""The verdict of scripts/soak.sh from its work directory (kept with
SOAK_KEEP=1, it can be run again):

    soak-report.py WORK_DIR PROFILE MINUTES NODES
"""
import json, sys, os, collections
work, profile, minutes, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def load(name):
    try:
        return json.loads(open(os.path.join(work, name)).read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": str(e), "clean": False}
events = [l.split(" ", 1) for l in open(os.path.join(work, "events")).read().splitlines()]
t_start = int(events[0][0])
faults = [(int(t), e) for t, e in events if " fault " in f" {e}" or e.startswith("fault")]
recoveries = [e for _, e in events if e.startswith("recovered")]
ok = True
lines = [f"## Soak, {profile} profile: {minutes} min, {n} node(s)", ""]
lines.append("| bot | sent | acked | delivered | acked but lost | duplicates | out of seq order | sender order violated | redeliveries | reconnects | longest reconnect | clean |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
examples = []
for name, f in [("soak pairs (1 device)", "pairs.json"), ("soak multi-device (3 devices)", "md.json")]:
    r = load(f)
    c = r.get("correctness", {})
    fig = r.get("figures", {})
    clean = bool(r.get("clean"))
    ok &= clean
    lines.append(f"| {name} | {r.get('sent', '—'):,} | {r.get('acked', '—'):,} | {r.get('delivered', '—'):,} | "
                 f"{c.get('acked_but_not_delivered', '—')} | {c.get('duplicates', '—')} | {c.get('out_of_order', '—')} | {c.get('sender_order_violated', '—')} | "
                 f"{c.get('redeliveries', '—')} | {fig.get('reconnects', '—')} | {fig.get('longest reconnect ms', '—')} ms | "
                 f"{'yes' if clean else '**no**'} |" if "error" not in r else f"| {name} | no report: {r['error']} | | | | | | | | | | **no** |")
    examples += [f"- {name}: missing {e}" for e in c.get("missing_examples", [])]
    examples += [f"- {name}: out of order {e}" for e in c.get("out_of_order_examples", [])]
if examples:
    lines += ["", "Examples to look up:"] + examples
# CS chunks: those no fault touched must be clean.
chunks = []
if os.path.exists(os.path.join(work, "cs-chunks")):
    for l in open(os.path.join(work, "cs-chunks")).read().splitlines():
        a, b, c = l.split()
        r = load(f"cs{c}.json")
        hit = any(int(a) - 5 <= t <= int(b) for t, _ in faults)
        chunks.append((int(c), hit, bool(r.get("clean")), r))
quiet = [ch for ch in chunks if not ch[1]]
quiet_clean = sum(1 for ch in quiet if ch[2])
hit_clean = sum(1 for ch in chunks if ch[1] and ch[2])
ok &= quiet_clean == len(quiet)
lines.append("")
lines.append(f"Customer service: {len(chunks)} chunks of `bot cs`; {quiet_clean} of the {len(quiet)} that no fault touched were clean "
             f"(must be all); {hit_clean} of the {len(chunks) - len(quiet)} during a fault were clean (that bot does not reconnect).")
lines.append("")
lines.append(f"Faults injected: {len(faults)}.")
lines.append("")
for _, e in faults:
    lines.append(f"- {e}")
lines.append("")
for e in recoveries:
    lines.append(f"- {e}")
# RSS per node process: from its first sample 2 minutes into its life to
# its last; and the peak of each life, first lives against the last.
rss = collections.defaultdict(list)
if os.path.exists(os.path.join(work, "rss")):
    for l in open(os.path.join(work, "rss")).read().splitlines():
        parts = l.split()
        if len(parts) == 4 and parts[3] != "0":
            rss[(int(parts[1]), parts[2])].append((int(parts[0]), int(parts[3])))
lines.append("")
lines.append("RSS per node process (MiB), sampled every 20 s of its life:")
lines.append("")
flat = True
peaks = collections.defaultdict(list)
for (i, pid), samples in sorted(rss.items(), key=lambda kv: kv[1][0][0]):
    peaks[i].append(max(kb for _, kb in samples))
    warm = [kb for t, kb in samples if t - samples[0][0] >= 120]
    growth = ""
    if len(warm) >= 3:
        g = (warm[-1] - warm[0]) / 1024
        growth = f" — after 2 min of warm-up: {warm[0] / 1024:.1f} → {warm[-1] / 1024:.1f} MiB ({g:+.1f})"
        # Flat: within 20% (or 16 MiB) of the post-warm-up size.
        if warm[-1] > warm[0] * 1.2 and warm[-1] - warm[0] > 16 * 1024:
            flat = False
    if len(samples) > 12:
        shown = " ".join(f"{kb / 1024:.0f}" for _, kb in samples[::3])
        lines.append(f"- node {i} (pid {pid}), every minute: {shown}{growth}")
    else:
        lines.append(f"- node {i} (pid {pid}): {' '.join(f'{kb / 1024:.0f}' for _, kb in samples)}{growth}")
for i, p in peaks.items():
    if len(p) >= 9:
        # A node restarted every minute: the peaks of its lives, the middle
        # third (warmed up: caches full) against the last third.
        third = len(p) // 3
        mid, last = p[third:2 * third], p[2 * third:]
        mid_avg, last_avg = sum(mid) / len(mid), sum(last) / len(last)
        lines.append(f"- node {i}: peak RSS per life, first {p[0] / 1024:.0f} MiB; middle third of its {len(p)} lives "
                     f"{mid_avg / 1024:.1f} MiB on average, last third {last_avg / 1024:.1f} MiB, last {p[-1] / 1024:.0f} MiB")
        if last_avg > mid_avg * 1.2 and last_avg - mid_avg > 16 * 1024:
            flat = False
ok &= flat
panics = []
for i in range(n):
    text = open(os.path.join(work, f"node{i}.final.log"), errors="replace").read()
    if "panicked" in text:
        panics.append(i)
ok &= not panics
lines.append("")
lines.append(f"Panics in node logs: {'none' if not panics else panics}. RSS flat after warm-up: {'yes' if flat else '**no**'}.")
lines.append("")
lines.append(f"**Result: {'PASS' if ok else 'FAIL'}**")
print("\n".join(lines))
sys.exit(0 if ok else 1)
