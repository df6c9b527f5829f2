#!/usr/bin/env python3
"""One client session through the orchestrator: Speak turns, one after another, all
with the same session_id, until STOP_FILE appears (or --turns are done).

Prints one JSON line per turn to stdout (flushed):
  {"turn": 3, "ok": true, "frames": 87, "audio_ms": 1740, "t_start": ..., "t_end": ...}
  {"turn": 4, "ok": false, "code": "UNAVAILABLE", "message": "...", "frames": 12, ...}

Used by scripts/compose-e2e.sh to kill a TTS worker in the middle of a session and
see the session's turns go on elsewhere. The gRPC stubs are generated from proto/
at start (grpcio-tools), so nothing generated is committed.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
import time


def load_stubs(proto_dir):
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="voxwire-stubs-")
    protos = ["tts.proto", "stt.proto", "voxwire.proto"]
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + [os.path.join(proto_dir, p) for p in protos]
    )
    if rc != 0:
        sys.exit(f"protoc failed on {proto_dir}")
    sys.path.insert(0, out)
    return importlib.import_module("voxwire_pb2"), importlib.import_module("voxwire_pb2_grpc")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orchestrator", required=True, help="HOST:PORT")
    ap.add_argument("--session", required=True, help="session_id used for every turn")
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--stop-file", help="stop once this file exists")
    ap.add_argument("--turns", type=int, default=0, help="stop after N turns (0: no limit)")
    ap.add_argument("--text", default="The session goes on, one sentence after another.")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline of one turn, seconds")
    args = ap.parse_args()

    import grpc

    pb, pb_grpc = load_stubs(args.proto_dir)
    channel = grpc.insecure_channel(args.orchestrator)
    stub = pb_grpc.VoxwireStub(channel)
    turn = 0
    while True:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if args.turns and turn >= args.turns:
            break
        turn += 1
        started = time.time()
        frames = 0
        audio_bytes = 0
        rate = 0
        final_seen = False
        record = {"turn": turn, "session": args.session, "t_start": started}
        try:
            request = pb.SpeakRequest(session_id=args.session, text=f"{args.text} Turn {turn}.")
            for frame in stub.Speak(request, timeout=args.timeout):
                frames += 1
                audio_bytes += len(frame.audio_data)
                rate = frame.sample_rate or rate
                final_seen = final_seen or frame.is_final
            record.update(ok=final_seen, frames=frames)
            if not final_seen:
                record["message"] = "stream ended without is_final"
        except grpc.RpcError as error:
            record.update(ok=False, code=error.code().name, message=error.details(), frames=frames)
        record["audio_ms"] = int(audio_bytes / 2 / rate * 1000) if rate else 0
        record["t_end"] = time.time()
        print(json.dumps(record), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
