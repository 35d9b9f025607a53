"""The request check answers 422 with a readable message, and passes good requests on
with their body intact (a real ASGI exchange, driven with asyncio)."""
import asyncio
import json

from lib_tilesampler.api_check import RequestCheck, check_alwayson_args


def exchange(body, path="/sdapi/v1/txt2img", chunks=2):
    received = {}

    async def app(scope, receive, send):
        data = b""
        while True:
            message = await receive()
            data += message.get("body", b"")
            if not message.get("more_body"):
                break
        received["body"] = data
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    raw = json.dumps(body).encode()
    parts = [raw] if chunks == 1 else [raw[: len(raw) // 2], raw[len(raw) // 2:]]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
                for i, part in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    middleware = RequestCheck(app, [check_alwayson_args("Tile Sampler")])
    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:]), received.get("body")


def test_good_request_reaches_the_app_with_the_same_body():
    body = {"prompt": "x", "alwayson_scripts": {"tile sampler": {"args": [{"hypertile": True}]}}}
    status, answer, received = exchange(body)
    assert status == 200 and answer == b"ok" and json.loads(received) == body


def test_bad_named_key_gets_422_with_the_reason():
    body = {"alwayson_scripts": {"Tile Sampler": {"args": [{"hypertile_tile": 256}]}}}
    status, answer, received = exchange(body)
    assert status == 422 and received is None
    error = json.loads(answer)
    assert "Tile Sampler: unknown key(s) 'hypertile_tile'" in error["detail"]
    assert error["detail"] == error["errors"]


def test_too_many_positional_args_and_wrong_types_get_422():
    too_many = [False, False, 256, 2, 0, False, False] + [None] * 30
    status, answer, _ = exchange({"alwayson_scripts": {"tile sampler": {"args": too_many}}})
    assert status == 422 and b"positional args" in answer
    status, answer, _ = exchange({"alwayson_scripts": {"tile sampler": {"args": [True, True, "x"]}}},
                                 path="/sdapi/v1/img2img")
    assert status == 422 and b"hypertile_tile_size must be int" in answer
    status, answer, _ = exchange({"alwayson_scripts": {"tile sampler": [True]}})
    assert status == 422 and b"must be" in answer


def test_other_requests_pass_untouched():
    assert exchange({"prompt": "x"})[0] == 200
    assert exchange({"alwayson_scripts": {"other": {"args": ["anything"]}}})[0] == 200
    assert exchange({"alwayson_scripts": {"tile sampler": {"args": [True] * 9}}},
                    path="/sdapi/v1/options")[0] == 200
