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
# before/after table; the bots are always this tree's), BENCH_RECOVERY_MIB
# (write-ahead log size for the crash-recovery figure, default 1024),
# BENCH_HISTORY_MESSAGES (conversation length for the history figure,
# default 100000).
#
# RabbitMQ is the durable peer: quorum queues, publisher confirms, manual
# acks, driven by `dd-bench amqp-*` against the RabbitMQ server already
# running on 127.0.0.1:5672 (guest/guest; its columns stay empty when there
# is none). Unlike the other two it is not restarted per scenario; each run
# declares its own queues and deletes them at the end.
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
recovery_mib=${BENCH_RECOVERY_MIB:-1024}
history_messages=${BENCH_HISTORY_MESSAGES:-100000}

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
    DONGDONG_LIMITS__RATE_PER_SEC=1000000 DONGDONG_LIMITS__RATE_BURST=1000000 DONGDONG_LIMITS__USER_FRAMES_PER_SEC=0 DONGDONG_LIMITS__USER_SENDS_PER_SEC=0 \
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
# RabbitMQ's main Erlang VM, if one is running on the standard port.
rabbit_pid=$(pgrep -o -f 'beam.smp.*rabbit boot' || true)
rabbit_files=0
if [ -n "$rabbit_pid" ] && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  rabbit() { run "$1" "$mq" --port 5672 --server-pid "$rabbit_pid" "${@:2}"; }
  rabbit_files=$(awk '/Max open files/ {print $4}' "/proc/$rabbit_pid/limits")
else
  echo "bench.sh: no RabbitMQ on 127.0.0.1:5672; its columns stay empty" >&2
  rabbit() { :; }
fi

start_servers
bot pairs pairs --pairs 100 --window 10 --duration "${seconds}s" --warmup 2s
peer mqtt-pairs mqtt-pairs --pairs 100 --window 10 --duration "${seconds}s" --warmup 2s
rabbit amqp-pairs amqp-pairs --pairs 100 --window 10 --duration "${seconds}s" --warmup 2s
start_servers
bot rate pairs --pairs 1000 --rate 5 --duration "${seconds}s" --warmup 2s
peer mqtt-rate mqtt-pairs --pairs 1000 --rate 5 --duration "${seconds}s" --warmup 2s
# 1,000 quorum queues and 2,000 connections need more than RabbitMQ's
# default 1,024 open files: with that limit, new connections hang.
if [ "$rabbit_files" -ge 8192 ]; then
  rabbit amqp-rate amqp-pairs --pairs 1000 --rate 5 --duration "${seconds}s" --warmup 2s
else
  echo "bench.sh: RabbitMQ may open only $rabbit_files files, too few for 1,000 quorum queues; skipping its 1,000-sender run" \
    "(raise it: 'rabbitmq soft nofile 20000' in /etc/security/limits.d/, then restart RabbitMQ)" >&2
fi
start_servers
bot offline offline --receivers "$off_r" --messages "$off_m" --window 10
peer mqtt-offline mqtt-offline --receivers "$off_r" --messages "$off_m" --window 10
rabbit amqp-offline amqp-offline --receivers "$off_r" --messages "$off_m" --window 10
start_servers
bot idle idle --connections "$idle" --duration 5s
peer mqtt-idle mqtt-idle --connections "$idle" --duration 5s
start_servers
bot multi-device multi-device --pairs 50 --devices 3 --window 10 --duration "${seconds}s" --warmup 2s
start_servers
bot cs cs --api "http://127.0.0.1:$http_port" --arrivals 50 --agents 50 --capacity 5 --messages 3 \
  --think 200ms --duration "${seconds}s"
start_servers
bot history history --messages "$history_messages" --pages 1000 --limit 50
stop_servers
run recovery "$mq" store-recovery --log-mib "$recovery_mib"

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

r = {n: load(n) for n in ["pairs", "mqtt-pairs", "amqp-pairs", "rate", "mqtt-rate", "amqp-rate", "offline", "mqtt-offline",
                          "amqp-offline", "idle", "mqtt-idle", "multi-device", "cs", "history", "recovery"]}
rows = []
def row(what, ours, theirs, rabbit, better, target, unit=""):
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
    rows.append(f"| {what} | {fmt(ours, unit)} | {fmt(theirs, unit)} | {fmt(ratio, '×')} | {fmt(rabbit, unit)} | {better} | {tdesc} | {met} |")

row("pairs 100, window 10: delivered msg/s", get(r["pairs"], "delivered_per_sec"), get(r["mqtt-pairs"], "delivered_per_sec"),
    get(r["amqp-pairs"], "delivered_per_sec"), "higher", ("ratio>=", 1.0))
row("pairs 100, window 10: p99 latency", get(r["pairs"], "latency_ms", "p99"), get(r["mqtt-pairs"], "latency_ms", "p99"),
    get(r["amqp-pairs"], "latency_ms", "p99"), "lower", None, " ms")
row("1,000 senders × 5 msg/s: p99 latency", get(r["rate"], "latency_ms", "p99"), get(r["mqtt-rate"], "latency_ms", "p99"),
    get(r["amqp-rate"], "latency_ms", "p99"), "lower", ("<=", 5), " ms")
row("1,000 senders × 5 msg/s: p50 latency", get(r["rate"], "latency_ms", "p50"), get(r["mqtt-rate"], "latency_ms", "p50"),
    get(r["amqp-rate"], "latency_ms", "p50"), "lower", None, " ms")
row(f"offline: replay all pending, s", get(r["offline"], "figures", "replay_s"), get(r["mqtt-offline"], "replay_s"),
    get(r["amqp-offline"], "replay_s"), "lower", ("ratio<=", 1.0), " s")
row(f"idle: server RSS per connection", get(r["idle"], "figures", "server_bytes_per_conn"), get(r["mqtt-idle"], "server_bytes_per_conn"),
    None, "lower", ("<=", 3072), " B")

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
    w("RabbitMQ is the durable comparison: one quorum queue per receiver (it fsyncs before it confirms),")
    w("persistent messages, publisher confirms with the same window, manual acks per message, prefetch")
    w("20. It is the machine's running RabbitMQ server, not restarted per scenario; it has no idle")
    w("figure. The ratio column is against Mosquitto.")
    w()
    w(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), {mem_gib()} GiB RAM, Linux {platform.release()}")
    w(f"- Open files per process: {subprocess.run(['sh','-c','ulimit -n'],capture_output=True,text=True).stdout.strip()}")
    w(f"- {version(['rustc','--version'])}; Mosquitto: {version([mosq,'-h'])}")
    if server_bin:
        w(f"- Server binary: `{server_bin}` (BENCH_SERVER); bots from this tree")
    w()
    w("| Scenario | dongdong | Mosquitto | ratio | RabbitMQ (quorum) | better | target | |")
    w("|---|---|---|---|---|---|---|---|")
    for line in rows:
        w(line)
    w()
    w("What bounds each missed target, with the profiles behind it: [docs/performance.md](docs/performance.md).")
    w()
    w("Correctness reports of the dongdong runs (the bot exits non-zero when one is not clean):")
    w()
    for n in ["pairs", "rate", "offline", "multi-device", "cs", "history"]:
        w(f"- `{n}`: {clean(n)}")
    for n in ["amqp-pairs", "amqp-rate", "amqp-offline"]:
        d = r[n]
        if d is not None:
            w(f"- RabbitMQ `{n}`: confirmed {d['acked']:,}, nacked {d.get('nacked', 0)}, "
              f"confirmed-but-never-delivered {d['acked_but_not_delivered']}")
    w()
    w("Server CPU, average over each run, in percent of one core (dongdong / Mosquitto / RabbitMQ):")
    w(f"pairs {cpu('pairs','server')} / {cpu('mqtt-pairs','server') if get(r['mqtt-pairs'],'server') else 'not sampled'} / {cpu('amqp-pairs','server')}, "
      f"rate {cpu('rate','server')} / {cpu('mqtt-rate','server')} / {cpu('amqp-rate','server')}; the bot itself used {cpu('pairs','bot')} in pairs. "
      f"Server CPU per delivered message in pairs: {us_per_msg('pairs')} (dongdong) / {us_per_msg('mqtt-pairs')} (Mosquitto) / "
      f"{us_per_msg('amqp-pairs')} (RabbitMQ).")
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
    hi = r["history"]
    if hi:
        w(f"- history: a conversation of {hi['acked']:,} messages ({get(hi, 'figures', 'fill')}), then "
          f"{hi['delivered']:,} pages of {get(hi, 'settings', 'limit')} requested one at a time, the newest first and the rest "
          f"spread over the conversation: p50 {fmt(get(hi,'latency_ms','p50'))} ms, p99 {fmt(get(hi,'latency_ms','p99'))} ms, "
          f"{fmt(get(hi, 'figures', 'pages_per_s'))} pages/s.")
    rc = r["recovery"]
    if rc:
        w(f"- crash recovery: a write-ahead log of {rc['log_bytes'] / 2**20:,.0f} MiB ({rc['acked']:,} acked messages, "
          f"checkpoints off, the writer exited without closing) reopened in {rc['open_s']:.1f} s; "
          f"RSS {rc['rss_kib_after_open'] / 1024:,.0f} MiB after the open (peak {rc.get('rss_kib_peak_during_open', 0) / 1024:,.0f} MiB during it); "
          f"lost {rc['lost']}.")
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
