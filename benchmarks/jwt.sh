#!/usr/bin/env bash
# The cost of RequestAuthentication: the same wrk load on the plaintext listener (one worker, pinned to
# $PROXY_CPU) without a policy, and with a RequestAuthentication whose RS256 or ES256 token every request carries
# (one token per run, so after the first request each worker verifies from its cache), plus a run where every
# request's token misses the cache (`ES256-uncached`: wrk's Lua script cycles through 20,000 tokens, more than a
# worker keeps, 4,096). Reports
# req/s and the proxy's CPU per request, medians of $RUNS rotations, and the extra µs per request against none.
# Tokens and keys are made here with PyJWT and `cryptography` (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; RUNS=${RUNS:-3}; CONNS=${CONNS:-64}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
ORIGIN_A=127.0.0.1:19281; ORIGIN_B=127.0.0.1:19282; PORT=19290
source benchmarks/lib.sh
bench_prepare jwt wrk
python3 -c "import jwt, cryptography" 2>/dev/null || python3 -m pip install -q pyjwt cryptography
start_origins $ORIGIN_A $ORIGIN_B
write_waypoint_config "$work/none.yaml" "${ORIGIN_A##*:}" "${ORIGIN_B##*:}"

# keys, tokens and the two configs
python3 - "$work" <<'PY'
import base64, json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
work = sys.argv[1]
def b64(n, size=None):
    return base64.urlsafe_b64encode(n.to_bytes(size or (n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
r, e = rsa_key.public_key().public_numbers(), ec_key.public_key().public_numbers()
jwks = json.dumps({"keys": [{"kty": "RSA", "kid": "r", "n": b64(r.n), "e": b64(r.e)},
                            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(e.x, 32), "y": b64(e.y, 32)}]})
claims = lambda i: {"iss": "https://issuer.example.com", "sub": f"user-{i}", "aud": "shop", "exp": int(time.time()) + 3600}
open(f"{work}/RS256.token", "w").write(jwt.encode(claims(0), rsa_key, algorithm="RS256", headers={"kid": "r"}))
open(f"{work}/ES256.token", "w").write(jwt.encode(claims(0), ec_key, algorithm="ES256", headers={"kid": "e"}))
with open(f"{work}/uncached.lua", "w") as lua:   # wrk: each request the next of 20,000 tokens
    tokens = [jwt.encode(claims(i), ec_key, algorithm="ES256", headers={"kid": "e"}) for i in range(20000)]
    lua.write("local tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}\nlocal i = 0\n"
              "request = function()\n  i = i % #tokens + 1\n  return wrk.format('GET', '/', {['Host'] = 'web', ['Authorization'] = 'Bearer ' .. tokens[i]})\nend\n")
base = open(f"{work}/none.yaml").read()
open(f"{work}/jwt.yaml", "w").write(base + f"""
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  jwtRules: [{{issuer: "https://issuer.example.com", audiences: [shop], jwks: '{jwks}'}}]
""")
PY

TARGETS=${TARGETS:-"none RS256 ES256 ES256-uncached"}
for run in $(seq "$RUNS"); do
    for target in $(rotation "$run" $TARGETS); do
        config=jwt.yaml; [ "$target" = none ] && config=none.yaml
        taskset -c "$PROXY_CPU" "$BIN" run --config "$work/$config" --http-listen 127.0.0.1:$PORT --admin-listen 127.0.0.1:0 \
            --workers 1 --access-log off >/dev/null 2>"$work/proxy.log" & pid=$!
        wait_port $PORT
        args=(-H 'Host: web')
        case $target in
            RS256|ES256) args+=(-H "Authorization: Bearer $(cat "$work/$target.token")") ;;
            ES256-uncached) args+=(-s "$work/uncached.lua") ;;
        esac
        measure_wrk "$pid" $PORT "$target" "$run" "${args[@]}"
    done
done
python3 - "$work/rows.tsv" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    target, rps, p50, p99, cpu = line.split("\t")
    rows.setdefault(target, []).append((float(rps), float(cpu)))
none = statistics.median(c for _, c in rows["none"])
print("| request | req/s | CPU µs/req | extra µs/req vs none |\n|---|---|---|---|")
for target, values in rows.items():
    rps, cpu = statistics.median(r for r, _ in values), statistics.median(c for _, c in values)
    print(f"| {target} | {rps:,.0f} | {cpu:.1f} | {cpu - none:+.1f} |")
PY
