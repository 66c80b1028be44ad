#!/usr/bin/env bash
# Runs the standard benchmark set against dongdong (embedded backend) and,
# in the same run on the same machine, against Mosquitto (MQTT QoS 1,
# persistent sessions, persistence on), and writes BENCHMARKS.md: the
# machine, the commands, and our figure, Mosquitto's and the ratio.
#
#   scripts/bench.sh [OUTPUT.md]
#
# Environment: BENCH_SECONDS (measured seconds per load run, default 10),
# BENCH_IDLE (idle connections, default 19500), BENCH_OFFLINE_RECEIVERS
# (default 1000), BENCH_OFFLINE_MESSAGES (default 100), BENCH_SERVER (another
# `dongdong` binary to run as the server, e.g. an older build for a
# before/after table; the bots are always this tree's).
#
# The bots load the server as real clients do: sends pipelined, and an Ack
# for each message as it is read (`--ack per-message`, the bot's default).
#
# The bots and the servers share this machine's cores; every figure says so.
# Each scenario gets freshly started servers with empty data directories.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-$root/BENCHMARKS.md}
seconds=${BENCH_SECONDS:-10}
idle=${BENCH_IDLE:-19500}
off_r=${BENCH_OFFLINE_RECEIVERS:-1000}
off_m=${BENCH_OFFLINE_MESSAGES:-100}

me=bench.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

echo "bench.sh: building (release)" >&2
cargo build --release -q -p dongdong -p dongdong-bench
dd="$root/target/release/dongdong"
server_bin=${BENCH_SERVER:-$dd}
mq="$root/target/release/dd-bench"

work=$(mktemp -d /tmp/dongdong-bench.XXXXXX)
server_pid=""
broker_pid=""
stop_servers() {
  for p in $server_pid $broker_pid; do kill "$p" 2>/dev/null || true; done
  for p in $server_pid $broker_pid; do wait "$p" 2>/dev/null || true; done
  server_pid=""
  broker_pid=""
}
trap 'stop_servers; rm -rf "$work"' EXIT

secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# A fresh dongdong (embedded) and a fresh Mosquitto for each scenario.
start_servers() {
  stop_servers
  rm -rf "$work/data" "$work/mosquitto"
  # Write back what the previous scenario left dirty, so its writeback does
  # not compete with this scenario's fsyncs.
  sync
  mkdir -p "$work/mosquitto"
  ws_port=$(free_port)
  http_port=$(free_port)
  DONGDONG_AUTH__SECRET=$secret \
    DONGDONG_LIMITS__RATE_PER_SEC=1000000 DONGDONG_LIMITS__RATE_BURST=1000000 \
    DONGDONG_LIMITS__MAX_CONNECTIONS=19600 DONGDONG_LOG__FILTER=warn \
    "$server_bin" serve --data "$work/data" --listen "127.0.0.1:$ws_port" --http "127.0.0.1:$http_port" \
    >"$work/dongdong.log" 2>&1 &
  server_pid=$!
  mq_port=$(free_port)
  cat >"$work/mosquitto/mosquitto.conf" <<EOF
listener $mq_port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/mosquitto/
max_queued_messages 1000000
set_tcp_nodelay true
log_dest file $work/mosquitto/log
EOF
  "$mosquitto_bin" -c "$work/mosquitto/mosquitto.conf" >/dev/null 2>&1 &
  broker_pid=$!
  wait_port "$ws_port" dongdong
  wait_port "$mq_port" mosquitto
}


commands="$work/commands.txt"
run() { # name, then the command (recorded for BENCHMARKS.md)
  local name=$1
  shift
  echo "bench.sh: $name" >&2
  echo "$*" | sed -e "s#$root/target/release/##" -e "s#$secret#\$SECRET#" -e "s#$work#\$WORK#g" >>"$commands"
  "$@" >"$work/$name.json" || { echo "bench.sh: $name failed (see $work/$name.json)" >&2; cat "$work/$name.json" >&2; }
}
# dongdong's bot and the MQTT driver, pointed at this scenario's servers.
bot() { run "$1" "$dd" bot "${@:2}" --url "ws://127.0.0.1:$ws_port/ws" --secret "$secret" --server-pid "$server_pid" --json; }
peer() { run "$1" "$mq" --port "$mq_port" --server-pid "$broker_pid" "${@:2}"; }

start_servers
bot pairs pairs --pairs 100 --window 10 --duration "${seconds}s" --warmup 2s
peer mqtt-pairs mqtt-pairs --pairs 100 --window 10 --duration "${seconds}s" --warmup 2s
start_servers
bot rate pairs --pairs 1000 --rate 5 --duration "${seconds}s" --warmup 2s
peer mqtt-rate mqtt-pairs --pairs 1000 --rate 5 --duration "${seconds}s" --warmup 2s
start_servers
bot offline offline --receivers "$off_r" --messages "$off_m" --window 10
peer mqtt-offline mqtt-offline --receivers "$off_r" --messages "$off_m" --window 10
start_servers
bot idle idle --connections "$idle" --duration 5s
peer mqtt-idle mqtt-idle --connections "$idle" --duration 5s
start_servers
bot multi-device multi-device --pairs 50 --devices 3 --window 10 --duration "${seconds}s" --warmup 2s
start_servers
bot cs cs --api "http://127.0.0.1:$http_port" --arrivals 50 --agents 50 --capacity 5 --messages 3 \
  --think 200ms --duration "${seconds}s"
stop_servers

python3 - "$work" "$out" "$commands" "$mosquitto_bin" "${BENCH_SERVER:-}" <<'PY'
import json, os, platform, subprocess, sys, datetime
work, out, commands, mosq, server_bin = sys.argv[1:6]

def load(name):
    try:
        with open(os.path.join(work, name + ".json")) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return None

def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()

def mem_gib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)

def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        return "?"

def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d

def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float):
        v = round(v, 2) if v < 100 else round(v)
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"

r = {n: load(n) for n in ["pairs", "mqtt-pairs", "rate", "mqtt-rate", "offline", "mqtt-offline", "idle", "mqtt-idle", "multi-device", "cs"]}
rows = []
def row(what, ours, theirs, better, target, unit=""):
    ratio = None
    if ours is not None and theirs:
        ratio = ours / theirs
    if target is None:
        met = ""
    elif ours is None:
        met = "no result"
    else:
        kind, value = target
        ok = (ours / theirs >= value if theirs else False) if kind == "ratio>=" else \
             (ours / theirs <= value if theirs else False) if kind == "ratio<=" else \
             ours <= value
        met = "met" if ok else "**missed**"
    tdesc = "" if target is None else {"ratio>=": "≥ {}× Mosquitto", "ratio<=": "≤ {}× Mosquitto", "<=": "≤ {}" + unit}[target[0]].format(target[1])
    rows.append(f"| {what} | {fmt(ours, unit)} | {fmt(theirs, unit)} | {fmt(ratio, '×')} | {better} | {tdesc} | {met} |")

row("pairs 100, window 10: delivered msg/s", get(r["pairs"], "delivered_per_sec"), get(r["mqtt-pairs"], "delivered_per_sec"), "higher", ("ratio>=", 1.0))
row("pairs 100, window 10: p99 latency", get(r["pairs"], "latency_ms", "p99"), get(r["mqtt-pairs"], "latency_ms", "p99"), "lower", None, " ms")
row("1,000 senders × 5 msg/s: p99 latency", get(r["rate"], "latency_ms", "p99"), get(r["mqtt-rate"], "latency_ms", "p99"), "lower", ("<=", 5), " ms")
row("1,000 senders × 5 msg/s: p50 latency", get(r["rate"], "latency_ms", "p50"), get(r["mqtt-rate"], "latency_ms", "p50"), "lower", None, " ms")
row(f"offline: replay all pending, s", get(r["offline"], "figures", "replay_s"), get(r["mqtt-offline"], "replay_s"), "lower", ("ratio<=", 2.0), " s")
row(f"idle: server RSS per connection", get(r["idle"], "figures", "server_bytes_per_conn"), get(r["mqtt-idle"], "server_bytes_per_conn"), "lower", ("<=", 3072), " B")

def clean(name):
    d = r[name]
    if d is None:
        return "no result"
    c = d["correctness"]
    return (f"{'clean' if d['clean'] else 'NOT CLEAN'}: acked {c['acked']:,}, acked-but-never-delivered {c['acked_but_not_delivered']}, "
            f"duplicates {c['duplicates']}, out-of-order {c['out_of_order']}, "
            f"sender-order-violated {c.get('sender_order_violated', '—')}")

def cpu(name, who):
    p = get(r[name], who)
    return "—" if not p else f"{p['cpu_percent_avg']:.0f}%"

def us_per_msg(name):
    p, rate = get(r[name], "server"), get(r[name], "delivered_per_sec")
    return "—" if not p or not rate else f"{p['cpu_percent_avg'] / 100 * 1e6 / rate:.0f} µs"

with open(out, "w") as f:
    w = lambda s="": f.write(s + "\n")
    w("# Benchmarks")
    w()
    w("Written by `scripts/bench.sh` (do not edit by hand; run it again). dongdong runs its embedded")
    w("backend (every message durably stored before its SendAck); Mosquitto runs with persistence on,")
    w("QoS 1 and persistent sessions (clean_session=false), one topic per receiver. Each scenario starts")
    w("both servers fresh. **The load generator and the server share the same cores**: every figure")
    w("below is for server + bots on one machine, which is why each is set beside the peer's from the")
    w("same run. The bots ack each message as they read it (`--ack per-message`), as browsers and")
    w("mobile SDKs do; sends are pipelined.")
    w()
    w(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), {mem_gib()} GiB RAM, Linux {platform.release()}")
    w(f"- Open files per process: {subprocess.run(['sh','-c','ulimit -n'],capture_output=True,text=True).stdout.strip()}")
    w(f"- {version(['rustc','--version'])}; Mosquitto: {version([mosq,'-h'])}")
    if server_bin:
        w(f"- Server binary: `{server_bin}` (BENCH_SERVER); bots from this tree")
    w()
    w("| Scenario | dongdong | Mosquitto | ratio | better | target | |")
    w("|---|---|---|---|---|---|---|")
    for line in rows:
        w(line)
    w()
    w("What bounds each missed target, with the profiles behind it: [docs/performance.md](docs/performance.md).")
    w()
    w("Correctness reports of the dongdong runs (the bot exits non-zero when one is not clean):")
    w()
    for n in ["pairs", "rate", "offline", "multi-device", "cs"]:
        w(f"- `{n}`: {clean(n)}")
    w()
    w("Server CPU, average over each run, in percent of one core (dongdong / Mosquitto):")
    w(f"pairs {cpu('pairs','server')} / {cpu('mqtt-pairs','server') if get(r['mqtt-pairs'],'server') else 'not sampled'}, "
      f"rate {cpu('rate','server')} / {cpu('mqtt-rate','server')}; the bot itself used {cpu('pairs','bot')} in pairs. Server CPU per delivered "
      f"message in pairs: {us_per_msg('pairs')} (dongdong) / {us_per_msg('mqtt-pairs')} (Mosquitto).")
    w()
    w("Scenarios without a peer equivalent (dongdong only):")
    w()
    md = r["multi-device"]
    if md:
        w(f"- multi-device, 50 pairs × 3 devices, window 10: {fmt(md['delivered_per_sec'])} deliveries/s "
          f"(each message reaches 5 devices), p99 {fmt(get(md,'latency_ms','p99'))} ms.")
    cs = r["cs"]
    if cs:
        fig = cs["figures"]
        w(f"- cs, 50 customers/s, 50 agents × 5, 3 messages per session, 200 ms think time: "
          f"{fig.get('customers')} customers, {fig.get('served_and_rated', 0)} served and rated, "
          f"{fmt(fig.get('sessions_per_s'))} sessions/s, assignment wait p99 {fmt(get(fig,'assign_wait_ms','p99'))} ms, "
          f"message p99 {fmt(get(cs,'latency_ms','p99'))} ms.")
    w()
    w("## Commands")
    w()
    w("The servers were started by `scripts/bench.sh` (dongdong: `dongdong serve` with an empty data")
    w("directory and raised per-connection rate limits; Mosquitto with the configuration in the script).")
    w()
    w("```text")
    for line in open(commands):
        w(line.rstrip())
    w("```")
    w()
    w("## Raw results")
    w()
    w("```json")
    for n, d in r.items():
        if d is not None:
            d = dict(d)
            w(json.dumps({"run": n, **d}, sort_keys=True))
    w("```")
print(f"bench.sh: wrote {out}")
PY
# The table, for the terminal too.
sed -n '/^| Scenario/,/^$/p' "$out"
