#!/usr/bin/env bash
# What one message costs a cluster node in Redis: a private Redis behind
# scripts/redis-delay-proxy.py (DELAY_MS each way, default 5), one node on
# it and the MongoDB in MONGO_URL; alice and bob both connected to the node,
# alice sends N messages (default 40) one at a time, bob acks each as he
# reads it. Prints the SendAck latency (its median divided by the proxy's
# round trip is the number of Redis round trips on the send path: the node
# waits for nothing else but MongoDB) and Redis' own command counts per
# message (INFO commandstats on the Redis behind the proxy, acks included).
#
#   MONGO_URL=mongodb://127.0.0.1:27017 scripts/send-cost.sh
#
# RECIPIENT: same-node (default), other-node (bob on a second node on the
# same Redis and MongoDB: pushes cross the bus) or offline (bob never
# connects: his pending marks and, with no webhook, nothing else).
#
# REDIS_CLUSTER=1: a private 3-master Redis Cluster instead, with no proxy
# (the client follows the cluster's own addresses): only the commands per
# message, summed over the masters, mean anything then.
#
# BIN picks the dongdong binary (default: target/release/dongdong, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MONGO_URL:?set MONGO_URL}"
N=${N:-40} DELAY_MS=${DELAY_MS:-5}
if [ -z "${BIN:-}" ]; then
  cargo build -q --release -p dongdong
  BIN=target/release/dongdong
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
me=send-cost.sh
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ws=$(free_port)
echo 0 >"$work/delay"
if [ -n "${REDIS_CLUSTER:-}" ]; then
  start_redis_cluster "$work/redis-cluster" 3 0
  redis_ports=$(IFS=,; echo "${redis_cluster_ports[*]}")
  export DONGDONG_STORAGE__REDIS_CLUSTER=$redis_cluster_seeds
  DELAY_MS=0
else
  redis_port=$(free_port) proxy_port=$(free_port)
  redis-server --port "$redis_port" --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  python3 scripts/redis-delay-proxy.py "$proxy_port" "$redis_port" "$work/delay" &
  redis_ports=$redis_port
  export DONGDONG_STORAGE__REDIS_URL=redis://127.0.0.1:$proxy_port
fi
secret=send-cost-secret-0123456789abcdef0123
export DONGDONG_AUTH__SECRET=$secret DONGDONG_STORAGE__BACKEND=cluster \
  DONGDONG_STORAGE__MONGO_URL=$MONGO_URL \
  DONGDONG_STORAGE__MONGO_DATABASE=sendcost_$(date +%s) DONGDONG_LOG__FILTER=warn DONGDONG_STORAGE__NODE_ID=cost-1
"$BIN" serve --data "$work/node" --listen 127.0.0.1:$ws --http 127.0.0.1:$(free_port) >/dev/null 2>"$work/node.log" &
for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$ws") 2>/dev/null && break; sleep 0.05; done
RECIPIENT=${RECIPIENT:-same-node}
ws_bob=$ws
if [ "$RECIPIENT" = other-node ]; then
  ws_bob=$(free_port)
  DONGDONG_STORAGE__NODE_ID=cost-2 "$BIN" serve --data "$work/node2" --listen 127.0.0.1:$ws_bob \
    --http 127.0.0.1:$(free_port) >/dev/null 2>"$work/node2.log" &
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$ws_bob") 2>/dev/null && break; sleep 0.05; done
fi
SECRET=$secret N=$N DELAY_MS=$DELAY_MS WS=$ws WS_BOB=$ws_bob RECIPIENT=$RECIPIENT REDIS_PORTS=$redis_ports \
  DELAY_FILE=$work/delay python3 - <<'EOF'
import base64, hashlib, hmac, json, os, socket, statistics, struct, subprocess, threading, time

secret, n, delay = os.environ["SECRET"].encode(), int(os.environ["N"]), int(os.environ["DELAY_MS"])
ws_port, redis_ports = int(os.environ["WS"]), os.environ["REDIS_PORTS"].split(",")

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def token(user):
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"tenant": "cost", "sub": user, "role": "customer", "exp": now + 3600, "iat": now}).encode())
    return f"{head}.{body}.{b64(hmac.new(secret, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"

class Ws:
    def __init__(self, user, port=ws_port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        self.buf = self.buf.split(b"\r\n\r\n", 1)[1]
        self.send({"reqId": "1", "auth": {"token": token(user), "deviceId": user + "-1"}})
        assert "authOk" in self.recv(), user

    def send(self, obj):
        data, mask = json.dumps(obj).encode(), os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def need(self, k):
        while len(self.buf) < k:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def recv(self):
        while True:
            self.need(2)
            op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            at = 2
            if n == 126:
                self.need(4); n = struct.unpack(">H", self.buf[2:4])[0]; at = 4
            elif n == 127:
                self.need(10); n = struct.unpack(">Q", self.buf[2:10])[0]; at = 10
            self.need(at + n)
            payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
            if op == 1:
                return json.loads(payload)

recipient = os.environ["RECIPIENT"]
alice = Ws("alice")
bob = None if recipient == "offline" else Ws("bob", int(os.environ["WS_BOB"]))
got = []
def reader():
    while len(got) < n + 1:
        f = bob.recv()
        if "deliver" in f:
            m = f["deliver"]["message"]
            bob.send({"ack": {"msgIds": [m["msgId"]]}})
            got.append(m["msgId"])
if bob:
    threading.Thread(target=reader, daemon=True).start()
# One message first, so that the node's caches are warm, then the delay.
alice.send({"reqId": "2", "send": {"clientMsgId": "warm", "toUser": "bob", "content": {"text": "hi"}}})
while "sendAck" not in alice.recv():
    pass
time.sleep(0.5)
with open(os.environ["DELAY_FILE"], "w") as f:
    f.write(str(delay))
time.sleep(0.2)

def stats():
    total = {}
    for port in redis_ports:
        out = subprocess.run(["redis-cli", "-p", port, "INFO", "commandstats"], capture_output=True, text=True).stdout
        for l in out.splitlines():
            if l.startswith("cmdstat_"):
                k = l[8:].split(":")[0]
                total[k] = total.get(k, 0) + int(l.split("calls=")[1].split(",")[0])
    return total

before = stats()
lat = []
for i in range(n):
    t = time.perf_counter()
    alice.send({"reqId": str(10 + i), "send": {"clientMsgId": f"m{i}", "toUser": "bob", "content": {"text": f"m{i}"}}})
    while "sendAck" not in alice.recv():
        pass
    lat.append((time.perf_counter() - t) * 1000)
deadline = time.time() + 30
while bob and len(got) < n + 1 and time.time() < deadline:
    time.sleep(0.05)
time.sleep(4 * delay / 1000 + 0.5)  # the acks' writes
after = stats()
delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
for k in ("info", "cluster|nodes", "cluster|slots", "cluster|shards"):
    delta.pop(k, None)
per = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v)
p50 = statistics.median(lat)
where = (f"Redis {delay} ms away each way: SendAck p50 {p50:.1f} ms (= {p50 / (2 * delay):.1f} Redis round trips "
         f"of {2 * delay} ms)" if delay else f"Redis Cluster of {len(redis_ports)} masters: SendAck p50 {p50:.1f} ms")
who = {"same-node": "both users online on one node", "other-node": "the recipient online on another node",
       "offline": "the recipient offline"}[recipient]
print(f"{n} sends, {who}, {where}, min {min(lat):.1f} ms; "
      f"Redis commands per message: {sum(delta.values()) / n:.2f} ({per}); "
      + (f"delivered {len(got) - 1} of {n}" if bob else "nobody to deliver to"))
EOF
