#!/usr/bin/env python3
"""Splits the hub's CPU per connect by what it was doing, from `perf script` call graphs.

Why: issue 7 compares the server's CPU per connect with a crypto floor (1 sign + 3 verifies + 1
key exchange, measured in a hot loop). This says how much of a real connect is that crypto, how
much is the rest of TLS, the kernel's TCP work, and iothub's own code, so the gap can be read
rather than guessed.

Usage: profile-report.py PERF_SCRIPT_OUTPUT STORM_JSON [FLOOR_JSON]
       profile-report.py --ratio FULL_PERF FULL_STORM RESUMED_PERF RESUMED_STORM
       profile-report.py --self-test
  PERF_SCRIPT_OUTPUT: `perf script -F comm,ip,sym` of the hub, recorded with call graphs;
  STORM_JSON: the `iothub-bench connect` result (JSON) of the storm that was recorded;
  FLOOR_JSON: an `iothub-bench floor` result: a full handshake's groups are then also set
  against the floor.
  --ratio: how many times a resumed connect's server CPU fits in a full one's, with and without
  iothub's own code.
Each sample goes to the first category, in the order below, that any frame of its stack
matches; its cost is its share of the samples times the storm's server CPU per connect.
"""

import json
import re
import sys

# (group, category, pattern over the frames of a stack). Order matters: the first match wins,
# so specific work comes before the generic layers that call it (rustls, tokio).
CATEGORIES = [
    ("crypto in the floor", "client CertificateVerify check (1 ECDSA P-256 verify)",
     r"verify_tls1[23]_signature"),
    ("crypto in the floor", "device chain check (cache lookup; a miss verifies 2 signatures)",
     r"validate_chain_bounded|validate_device_chain"),
    ("crypto in the floor", "server signature (1 ECDSA P-256 sign)",
     r"Signer>::sign|EcdsaSigner"),
    ("crypto in the floor", "key exchange (X25519)",
     r"ActiveKeyExchange|SupportedKxGroup|generate_x25519|agree_ephemeral"),
    ("other TLS crypto", "session ticket (encrypt/decrypt)", r"ProducesTickets|ticketer::"),
    ("other TLS crypto", "key schedule (HKDF / TLS 1.2 PRF)",
     r"[Hh]kdf|KeySchedule|key_schedule|prf::|Prf"),
    ("other TLS crypto", "record encryption (AES-GCM)",
     r"MessageEncrypter|MessageDecrypter|encrypt_outgoing|decrypt_incoming"),
    ("other TLS crypto", "handshake transcript hash", r"HandshakeHash|hash::Context"),
    ("kernel", "socket writes (TCP send, loopback delivery, the client's ACKs)",
     r"__GI___writev|__libc_write|__send|sendmsg|sys_writev"),
    ("kernel", "socket reads", r"__libc_recv|recvfrom|sys_read\b|__libc_read"),
    ("kernel", "accept", r"accept4|__sys_accept|do_accept"),
    ("kernel", "close", r"__close|sys_close|__fput"),
    ("kernel", "epoll (register, wait) and thread parking",
     r"epoll_wait|epoll_ctl|park_internal|park_condvar|park_timeout|futex"),
    ("TLS protocol", "rustls: parsing, state machine, buffers", r"rustls::"),
    ("iothub", "MQTT session and hub (CONNECT, device, session table)",
     r"serve_session|iothub_hub::|iothub_mqtt::|session::Conn|session::run"),
    ("iothub", "gateway (accept loop, TLS stream glue)", r"iothub_gateway::"),
    ("iothub", "tokio runtime (tasks, timers, wake-ups)", r"tokio::"),
]
COMPILED = [(g, c, re.compile(p)) for g, c, p in CATEGORIES]
OTHER = ("other", "other (libc, kernel work outside a syscall, ...)")


def stacks(text):
    """Yields each sample's frames (symbol names, leaf first) from `perf script` output."""
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        frames = []
        for line in lines[1:]:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
        if frames:
            yield frames


def classify(frames):
    for group, category, pattern in COMPILED:
        if any(pattern.search(f) for f in frames):
            return group, category
    return OTHER


def breakdown(text):
    counts = {}
    total = 0
    for frames in stacks(text):
        key = classify(frames)
        counts[key] = counts.get(key, 0) + 1
        total += 1
    return counts, total


def against_floor(groups, total, per_connect_us, floor_ms):
    """The connect, and what is left of it without each layer above the crypto, as multiples of
    the floor: how far the parts no code of ours runs in already are from it."""
    floor_us = floor_ms * 1000.0

    def x(names):
        us = sum(groups.get(g, 0) for g in names) / total * per_connect_us
        return f"{us:.0f} µs = {us / floor_us:.2f}x"

    below = ["crypto in the floor", "other TLS crypto", "kernel"]
    return [
        "",
        f"Against the hot-loop floor ({floor_ms:.3f} ms): the whole connect "
        f"{x(below + ['TLS protocol', 'iothub', OTHER[0]])}; without iothub's own code "
        f"{x(below + ['TLS protocol', OTHER[0]])}; crypto and kernel alone {x(below)}.",
    ]


def report(counts, total, storm, floor_ms=None):
    per_connect_us = storm["server_cpu_ms_per_connect"] * 1000.0
    mode = "resumed" if storm.get("resume") else "full"
    out = [
        f"Server CPU per connect, TLS {storm.get('tls', '1.3')}, {mode} handshakes "
        f"({storm['connects']:,} connects at {storm['connects_per_second']:,.0f}/s, "
        f"{storm.get('resumed', 0):,} resumed; {total:,} samples): "
        f"**{per_connect_us:.0f} µs**",
        "",
        "| group | what the server was doing | µs per connect | share |",
        "|---|---|---|---|",
    ]
    order = [(g, c) for g, c, _ in CATEGORIES] + [OTHER]
    groups = {}
    for key in order:
        n = counts.get(key, 0)
        groups[key[0]] = groups.get(key[0], 0) + n
        if n:
            share = n / total
            out.append(f"| {key[0]} | {key[1]} | {share * per_connect_us:.0f} | {share:.1%} |")
    out += ["", "| group | µs per connect | share |", "|---|---|---|"]
    for group, n in groups.items():
        if n:
            out.append(f"| {group} | {n / total * per_connect_us:.0f} | {n / total:.1%} |")
    if floor_ms and not storm.get("resume"):
        out += against_floor(groups, total, per_connect_us, floor_ms)
    return "\n".join(out) + "\n"


def without_iothub_us(counts, total, storm):
    """The CPU per connect, and the part of it that is not iothub's own code, in µs."""
    per_connect_us = storm["server_cpu_ms_per_connect"] * 1000.0
    ours = sum(n for (group, _), n in counts.items() if group == "iothub")
    return per_connect_us, (total - ours) / total * per_connect_us


def ratio_line(full, resumed):
    """full and resumed: (counts, total, storm) of the two storms."""
    f_all, f_rest = without_iothub_us(*full)
    r_all, r_rest = without_iothub_us(*resumed)
    return (f"Server CPU per full connect / per resumed connect: {f_all / r_all:.2f}x "
            f"({f_all:.0f} / {r_all:.0f} µs); without iothub's own code "
            f"{f_rest / r_rest:.2f}x ({f_rest:.0f} / {r_rest:.0f} µs).\n")


SAMPLE = """iothub 1
\tffffffff81000000 tcp_sendmsg
\t 1000 __GI___writev
\t 2000 rustls::vecbuf::ChunkVecBuffer::write_to
\t 3000 iothub_gateway::stream::DeviceTls::send_queued

iothub 2
\t 1000 __ecp_nistz256_mul_montx
\t 2000 aws_lc_0_47_0_ECDSA_verify
\t 3000 rustls::webpki::verify::verify_tls13_signature
\t 4000 rustls::conn::ConnectionCore<Data>::process_new_packets

iothub 3
\t 1000 iothub_hub::sessions::<impl iothub_hub::Hub>::connect_ticket
\t 2000 iothub_gateway::session::serve_session

iothub 4
\t 1000 malloc
"""


def self_test():
    counts, total = breakdown(SAMPLE)
    assert total == 4, total
    got = {c: n for (_, c), n in counts.items()}
    assert got["socket writes (TCP send, loopback delivery, the client's ACKs)"] == 1, got
    assert got["client CertificateVerify check (1 ECDSA P-256 verify)"] == 1, got
    # Our hub's connect_ticket is not a TLS session ticket.
    assert got["MQTT session and hub (CONNECT, device, session table)"] == 1, got
    assert got[OTHER[1]] == 1, got
    storm = {"server_cpu_ms_per_connect": 0.4, "connects": 10, "connects_per_second": 5.0}
    text = report(counts, total, storm)
    assert "| kernel | socket writes" in text and "| 100 | 25.0% |" in text, text
    # 400 µs against a 0.2 ms floor: all of it 2x; without iothub (1 of 4 samples) 1.5x; crypto
    # and kernel (2 of 4) 1x.
    text = report(counts, total, storm, floor_ms=0.2)
    assert "the whole connect 400 µs = 2.00x; without iothub's own code 300 µs = 1.50x; " \
        "crypto and kernel alone 200 µs = 1.00x" in text, text
    resumed = dict(storm, server_cpu_ms_per_connect=0.2, resume=True)
    line = ratio_line((counts, total, storm), (counts, total, resumed))
    assert line.startswith("Server CPU per full connect / per resumed connect: 2.00x (400 / 200 µs); "
                           "without iothub's own code 2.00x (300 / 150 µs)"), line
    assert "Against" not in report(counts, total, resumed, floor_ms=0.2)
    print("profile-report.py: self-test passed")


def load_run(perf_path, storm_path):
    """(counts, total, storm) of one recorded storm, or None (said why) if it has no samples."""
    with open(perf_path, encoding="utf-8", errors="replace") as f:
        counts, total = breakdown(f.read())
    with open(storm_path, encoding="utf-8") as f:
        storm = json.load(f)
    if total == 0:
        print("profile-report.py: no samples in " + perf_path, file=sys.stderr)
        return None
    return counts, total, storm


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) == 6 and argv[1] == "--ratio":
        full, resumed = load_run(argv[2], argv[3]), load_run(argv[4], argv[5])
        if full is None or resumed is None:
            return 1
        sys.stdout.write(ratio_line(full, resumed))
        return 0
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    floor_ms = None
    if len(argv) == 4:
        with open(argv[3], encoding="utf-8") as f:
            floor_ms = json.load(f)["floor_ms"]
    run = load_run(argv[1], argv[2])
    if run is None:
        return 1
    sys.stdout.write(report(*run, floor_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
