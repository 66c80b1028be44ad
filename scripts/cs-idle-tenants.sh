#!/usr/bin/env bash
# What idle customer-service tenants cost a cluster: three nodes on a private
# Redis (started here, so its command counts are theirs alone) and the
# MongoDB in MONGO_URL; TENANTS tenants (default 10,000) each get a group
# through the HTTP API, BUSY of them (default 100) also a connected agent
# kept online. After the first sweeps, Redis' own command counts
# (INFO commandstats) over SECS seconds give the commands per second of
# the three nodes together, by command. The nodes, this script and the
# databases share this machine's cores.
#
#   MONGO_URL=mongodb://127.0.0.1:27017 scripts/cs-idle-tenants.sh
#
# BIN picks the dongdong binary (default: target/release/dongdong, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MONGO_URL:?set MONGO_URL}"
TENANTS=${TENANTS:-10000} BUSY=${BUSY:-100} SECS=${SECS:-20} WARMUP=${WARMUP:-15}
if [ -z "${BIN:-}" ]; then
  cargo build -q --release -p dongdong
  BIN=target/release/dongdong
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
secret=cs-idle-secret-0123456789abcdef0123
export DONGDONG_AUTH__SECRET=$secret DONGDONG_STORAGE__BACKEND=cluster \
  DONGDONG_STORAGE__REDIS_URL=redis://127.0.0.1:$port DONGDONG_STORAGE__MONGO_URL=$MONGO_URL \
  DONGDONG_STORAGE__MONGO_DATABASE=csidle_$(date +%s) DONGDONG_LOG__FILTER=warn
for i in 1 2 3; do
  ws=$((7930 + 2 * i)) http=$((7931 + 2 * i))
  DONGDONG_STORAGE__NODE_ID=idle-$i "$BIN" serve --data "$work/$i" --listen 127.0.0.1:$ws --http 127.0.0.1:$http \
    >/dev/null 2>"$work/$i.log" &
done
for i in 1 2 3; do
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$((7930 + 2 * i))") 2>/dev/null && break; sleep 0.05; done
done
# Groups for every tenant (HTTP, admin tokens signed here), agents online
# for the busy ones (a WebSocket each, held open while measuring).
SECRET=$secret TENANTS=$TENANTS BUSY=$BUSY SECS=$SECS WARMUP=$WARMUP REDIS_PORT=$port python3 - <<'EOF'
import base64, hashlib, hmac, http.client, json, os, subprocess, time

secret = os.environ["SECRET"].encode()
tenants, busy = int(os.environ["TENANTS"]), int(os.environ["BUSY"])
secs, warmup, port = int(os.environ["SECS"]), int(os.environ["WARMUP"]), os.environ["REDIS_PORT"]

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def token(tenant, user, role):
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"tenant": tenant, "sub": user, "role": role, "exp": now + 3600, "iat": now}).encode())
    sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"

started = time.time()
conns = [http.client.HTTPConnection("127.0.0.1", 7931 + 2 * i) for i in (1, 2, 3)]
for n in range(tenants):
    c = conns[n % 3]
    t = f"shop{n:05d}"
    c.request("PUT", "/api/v1/groups/default", body=json.dumps({"name": t}),
              headers={"Authorization": "Bearer " + token(t, "root", "admin"), "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), (r.status, t)
    if n < busy:
        c.request("PUT", "/api/v1/groups/default/agents/ann", body="{}",
                  headers={"Authorization": "Bearer " + token(t, "root", "admin"), "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 200, (r.status, t)
print(f"{tenants} tenants created in {time.time() - started:.1f} s")

# Busy tenants: an agent connected and online (JSON over WebSocket, by hand).
import socket, struct
def ws_open(port, tok):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    def send(obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
    send({"reqId": "1", "auth": {"token": tok, "deviceId": "console"}})
    send({"reqId": "2", "setStatus": {"status": "ONLINE"}})
    return s
agents = [ws_open(7930 + 2 * (1 + n % 3), token(f"shop{n:05d}", "ann", "agent")) for n in range(busy)]
print(f"{busy} agents connected")

def stats():
    out = subprocess.run(["redis-cli", "-p", port, "INFO", "commandstats"], capture_output=True, text=True).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            calls[name] = int(rest.split("calls=")[1].split(",")[0])
    return calls

time.sleep(warmup)
before = stats()
time.sleep(secs)
after = stats()
delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
total = sum(delta.values())
top = ", ".join(f"{k} {v / secs:.1f}/s" for k, v in sorted(delta.items(), key=lambda kv: -kv[1])[:8] if v)
print(f"3 nodes, {tenants} tenants ({busy} with an agent online): {total / secs:.1f} Redis commands/s ({top})")
for s in agents:
    s.close()
EOF
