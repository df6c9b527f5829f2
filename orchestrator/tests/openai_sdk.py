"""The official `openai` SDK, unmodified, against the orchestrator's /v1.

Run by tests/it/openai_sdk.rs in the venv it creates (target/venv-openai):

    python openai_sdk.py BASE_URL API_KEY OUT_DIR TEXT CLIP_WAV

Speaks TEXT (streamed, saved as OUT_DIR/speech.wav, and again as raw pcm),
transcribes that file and CLIP_WAV in several formats, provokes one error,
and prints one JSON object with what it got; the Rust side judges it.
"""

import json
import sys
import time

import openai
from openai import OpenAI


def main() -> None:
    base_url, api_key, out_dir, text, clip = sys.argv[1:6]
    # No retries: a failure must show as itself, not as a slower success.
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)

    models = [model.id for model in client.models.list()]

    speech_path = f"{out_dir}/speech.wav"
    started = time.monotonic()
    first_byte_s = None
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="wav"
    ) as response:
        content_type = response.headers.get("content-type")
        with open(speech_path, "wb") as out:
            for chunk in response.iter_bytes():
                if chunk and first_byte_s is None:
                    first_byte_s = time.monotonic() - started
                out.write(chunk)
    speech_total_s = time.monotonic() - started

    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input="Raw samples.", response_format="pcm"
    ) as response:
        pcm_bytes = sum(len(chunk) for chunk in response.iter_bytes())

    with open(speech_path, "rb") as f:
        spoken = client.audio.transcriptions.create(model="whisper-1", file=f)
    with open(clip, "rb") as f:
        clip_verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", language="en"
        )
    with open(clip, "rb") as f:
        clip_text = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="text"
        )

    try:
        client.audio.speech.create(model="tts-1", voice="alloy", input="")
        error = None
    except openai.BadRequestError as e:
        error = {"status": e.status_code, "body": e.body}

    print(
        json.dumps(
            {
                "sdk_version": openai.__version__,
                "models": models,
                "speech_content_type": content_type,
                "first_byte_s": first_byte_s,
                "speech_total_s": speech_total_s,
                "pcm_bytes": pcm_bytes,
                "spoken_text": spoken.text,
                "clip_text": clip_text,
                "clip_verbose_text": clip_verbose.text,
                "clip_segments": [
                    {"start": s.start, "end": s.end, "text": s.text}
                    for s in (clip_verbose.segments or [])
                ],
                "clip_duration": clip_verbose.duration,
                "error": error,
            }
        )
    )


if __name__ == "__main__":
    main()
