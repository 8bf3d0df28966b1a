"""The design card with nothing of amq in it, for bench/stream_floor.py: a Flask view that
POSTs to the fake Q with requests and streams its body back with iter_content, one SSE event
per chunk received (at a real pace, one chunk is one frame). No decoding, no translation."""
from __future__ import annotations

import json
import os

import requests
from flask import Flask, Response

app = Flask(__name__)
session = requests.Session()
URL = os.environ["AMAZONQ_API_ENDPOINT"]
HEADERS = {"Content-Type": "application/x-amz-json-1.0",
           "X-Amz-Target": "AmazonCodeWhispererStreamingService.GenerateAssistantResponse",
           "Authorization": "Bearer " + os.environ["BENCH_ACCESS_TOKEN"]}
BODY = json.dumps({"conversationState": {"chatTriggerType": "MANUAL", "currentMessage": {
    "userInputMessage": {"content": "hello", "modelId": "claude-sonnet-4"}}}}).encode()
EVENT = b"event: content_block_delta\ndata: {}\n\n"


@app.post("/v1/messages")
def relay():
    upstream = session.post(URL, data=BODY, headers=HEADERS, stream=True, timeout=(5, 300))

    def body():
        try:
            for _chunk in upstream.iter_content(chunk_size=None):
                yield EVENT
            yield b"event: message_stop\ndata: {}\n\n"
        finally:
            upstream.close()
    return Response(body(), mimetype="text/event-stream")
