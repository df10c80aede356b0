"""Adversarial tests of the reward server and its client, against real `triune serve-rewards` subprocesses.

Hostile bodies (lone surrogates, megabyte completions, JSON nested hundreds deep, numbers that overflow a float,
booleans where numbers belong, odd `reward_model` values), broken HTTP (wrong methods and content types, gzip,
pipelining, clients that vanish mid-upload or mid-scoring, many connections at once), the release's /judge
payloads as its trainer sends them, and a client facing servers that answer slowly, wrongly or not at all.

The rules checked: the server never answers 500, never hangs and keeps serving after each hostile request; what
it scores equals `score_sample` in-process; the client never hands back a wrong reward or mixes up the order.
Each of the 12 bugs this file found (500s on lone surrogates, 1e400, deep nesting, huge grid integers; booleans
taken as numbers; float steps dropped; /judge refusing bodies without a JSON Content-Type; a client that could not
send surrogates and took non-scores as rewards; a batch budget that did not bound a queued request) has a test here.
"""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from triune_trl import __version__
from triune_trl.rewards import RewardRouter, score_sample
from triune_trl.server.client import RemoteRewardRouter

from .server_helpers import DET_PARM, MATH_SPEC, call_router, expected_scores, running_server

TIME_LIMIT_S = 3
MATH = MATH_SPEC
MATH_FMT = {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.1}
TAG = {"ground_truth": "<ok>", "verifier": "tag", "accuracy_ratio": 1.0, "format_ratio": 0.0}
DET_GOLD = ("<answer>\n[{'bbox_2d': [0, 466, 43, 574], 'label': 'car'}, "
            "{'bbox_2d': [15, 472, 112, 589], 'label': 'car'}]\n</answer>")  # fmt: skip
DET_RESPONSE = ("<think>\ntwo cars\n</think>\n<answer>\n[{'bbox_2d': [0,313,45,386], 'label': 'Car'},\n"
                " {'bbox_2d': [16,317,116,396], 'label': 'Car'}]\n</answer>")  # fmt: skip
DET_SPEC = {"ground_truth": DET_GOLD, "verifier": "detection", "verifier_parm": DET_PARM, "accuracy_ratio": 1.0,
            "format_ratio": 0.1}  # fmt: skip
# math-verify needs about 14 s for this on a 2-core machine: past the server's time limit, and the client's timeout
SLOW = "\\boxed{" + "\\frac{1}{" * 3000 + "2" + "}" * 3000 + "}"
GOOD = {"completion": "\\boxed{4}", "reward_model": MATH}
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server():
    with running_server(workers=1, extra_args=["--time-limit", str(TIME_LIMIT_S)]) as running:
        yield running


_expected = expected_scores


def _assert_serving(url: str) -> None:
    """The server answers /health and still scores a plain item right."""
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    answer = httpx.post(f"{url}/v1/score?echo=false", json=[GOOD], timeout=30)
    assert answer.status_code == 200 and answer.json()[0]["accuracy_reward"] == 1.0


def _post(url: str, path: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=body, headers=headers or JSON_HEADERS, timeout=timeout)


def _item_bytes(completion_json: str = '"\\\\boxed{4}"', extra: str = "", spec_extra: str = "") -> bytes:
    """One /v1/score item as raw JSON text, so bodies can hold what `json.dumps` would never write."""
    spec = ('{"ground_truth": "\\\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, '
            f'"format_ratio": 0.0{spec_extra}}}')  # fmt: skip
    return f'{{"completion": {completion_json}, "reward_model": {spec}{extra}}}'.encode()


def _judge_payload(**fields) -> dict:
    payload = {"response": "<think>\nx\n</think>\n<answer>\n\\boxed{4}\n</answer>", "prompt": "a prompt",
               "answer": "4", "solution": "\\boxed{4}", "data_source": "mm_math", "reward_verifier": "mathverify",
               "reward_verifier_parm": "{}"}  # fmt: skip
    payload.update(fields)
    return payload


# ------------------------------------------------------------------------------------------------ /v1/score bodies


UNICODE_COMPLETIONS = [
    "<think>\n😀 👨‍👩‍👧‍👦 🏳️‍🌈\n</think>\n<answer>\n\\boxed{4}\n</answer>",
    "שלום \u202e\\boxed{4}\u202c عالم",  # RTL text and a right-to-left override around the answer
    "\ufeff\\boxed{4}\u200b\u200d",  # BOM, zero-width space and joiner
    "\x00\x01\x7f \\boxed{4} \ud7ff \ue000 \U0010ffff",  # control characters and the edges of the planes
    "e\u0301\u0301\u0301 ñ Å \\boxed{４}",  # combining marks, full-width digit
    "漢字かなカナ한국어 \\boxed{5}",
]


def test_unicode_completions_are_echoed_and_scored_like_in_process(server):
    items = [{"completion": text, "reward_model": spec, "data_source": "ü😀\u202e"}
             for text in UNICODE_COMPLETIONS for spec in (MATH, TAG)]  # fmt: skip
    response = httpx.post(f"{server.url}/v1/score", json=items, timeout=60)
    assert response.status_code == 200, response.text
    for item, out in zip(items, response.json(), strict=True):
        assert {key: out[key] for key in item} == item
        expected = _expected(item)
        assert {key: out[key] for key in expected} == expected


def test_megabyte_completions_are_scored_like_in_process(server):
    items = [
        {"completion": "a" * (1 << 20) + "\\boxed{4}", "reward_model": MATH},
        {"completion": "😀" * (1 << 18) + "<ok>", "reward_model": TAG},
        {"completion": "שלום עולם " * 100_000, "reward_model": MATH},
    ]
    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/score?echo=false", json=items, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert response.json() == [_expected(item) for item in items]
    assert time.monotonic() - started < 30


def test_judge_megabyte_unicode_response_is_scored_like_in_process(server):
    text = "<think>\n" + "漢😀" * 300_000 + "\n</think>\n<answer>\n\\boxed{4}\n</answer>"
    response = httpx.post(f"{server.url}/judge", json=_judge_payload(response=text, prompt="ש" * 100_000), timeout=60)
    assert response.status_code == 200, response.text[:300]
    spec = {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.1}
    expected = score_sample(text, spec)
    assert response.json()["rewards"]["final_reward"] == expected["final_reward"]


def _nested(depth: int) -> tuple[list, dict]:
    """A list and an object, each `depth` levels deep, with nulls and mixed values along the way."""
    deep_list: list = []
    for _ in range(depth):
        deep_list = [deep_list, None]
    deep_dict: dict = {"leaf": [1, None, "x"]}
    for level in range(depth):
        deep_dict = {f"k{level}": deep_dict, "n": None}
    return deep_list, deep_dict


def test_deeply_nested_valid_json_is_echoed_and_scored_like_in_process(server):
    deep_list, deep_dict = _nested(390)  # extra fields: parsed, validated and echoed, never sent to a worker
    _, spec_notes = _nested(390)
    spec = {**MATH, "notes": spec_notes}
    item = {"completion": "\\boxed{4}", "reward_model": spec, "trace": deep_list, "meta": deep_dict}
    response = httpx.post(f"{server.url}/v1/score", content=json.dumps([item]), headers=JSON_HEADERS, timeout=60)
    assert response.status_code == 200, response.text[:300]
    [out] = response.json()
    assert out["trace"] == deep_list and out["meta"] == deep_dict and out["reward_model"] == spec
    expected = _expected(item)
    assert {key: out[key] for key in expected} == expected and expected["accuracy_reward"] == 1.0
    _assert_serving(server.url)


@pytest.mark.parametrize("depth", [500, 800])
def test_a_reward_model_nested_past_the_depth_limit_is_a_422_not_a_null_score(server, depth):
    """A worker could not take such a spec (pickle spends two recursion levels per container): refused up front."""
    _, notes = _nested(depth)
    item = {"completion": "\\boxed{4}", "reward_model": {**MATH, "notes": notes}}
    response = httpx.post(f"{server.url}/v1/score?echo=false", content=json.dumps([item]), headers=JSON_HEADERS)
    assert response.status_code == 422
    assert "nested deeper than 400 levels" in response.json()["detail"][0]["msg"]
    _assert_serving(server.url)


def test_a_reward_model_nested_just_under_the_depth_limit_is_scored_like_in_process(server):
    _, notes = _nested(395)
    item = {"completion": "\\boxed{4}", "reward_model": {**MATH, "notes": notes}}
    response = httpx.post(f"{server.url}/v1/score?echo=false", content=json.dumps([item]), headers=JSON_HEADERS)
    assert response.status_code == 200
    assert response.json() == [_expected(item)] and _expected(item)["accuracy_reward"] == 1.0


@pytest.mark.parametrize("depth", [900, 950])
def test_a_reward_model_nested_past_what_a_worker_can_take_is_never_a_wrong_score(server, depth):
    """However deep the spec, the answer is a 422 or a null reward with its reason, never a made-up number."""
    body = b"[" + _item_bytes(spec_extra=', "x": ' + "[" * depth + "]" * depth) + b"]"
    response = _post(server.url, "/v1/score?echo=false", body)
    assert response.status_code in (200, 422), response.text[:300]
    if response.status_code == 200:
        [out] = response.json()
        assert out["final_reward"] is None and out["unverifiable_reason"]
    _assert_serving(server.url)


@pytest.mark.parametrize("where", ["extra", "reward_model"])
def test_json_nested_just_under_the_parsers_limit_is_not_a_500(server, where):
    nested = "[" * 970 + "]" * 970
    item = _item_bytes(extra=f', "x": {nested}') if where == "extra" else _item_bytes(spec_extra=f', "x": {nested}')
    response = _post(server.url, "/v1/score", b"[" + item + b"]")
    _assert_serving(server.url)
    assert response.status_code in (200, 422), response.status_code


def test_json_nested_past_the_parsers_limit_is_a_422(server):
    response = _post(server.url, "/v1/score", b"[" + _item_bytes(extra=', "x": ' + "[" * 5000 + "]" * 5000) + b"]")
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"][0]["msg"]
    _assert_serving(server.url)


def test_huge_numbers_are_refused_or_scored_like_in_process(server):
    big = 10**400
    # step/total_steps: Python ints of any size are valid, and the detection verifier's float() of them overflows,
    # which both sides report as unverifiable
    items = [
        {"completion": DET_RESPONSE, "reward_model": DET_SPEC, "image_size": [1036, 672], "step": big,
         "total_steps": big * 10},
        {"completion": DET_RESPONSE, "reward_model": DET_SPEC, "image_size": [1036, 672], "step": 1,
         "total_steps": big},
        {"completion": "\\boxed{4}", "reward_model": {**MATH, "accuracy_ratio": big}},
        {"completion": "\\boxed{4}", "reward_model": {**MATH, "accuracy_ratio": 1e308, "format_ratio": 1e308}},
        {"completion": DET_RESPONSE, "reward_model": DET_SPEC, "image_size": [1e308, 1e308], "step": 1,
         "total_steps": 10},
        {"completion": "\\boxed{4}", "reward_model": {**MATH, "format_ratio": -0.0}},
        {"completion": "\\boxed{4}", "reward_model": MATH, "step": 0, "total_steps": 1},
    ]  # fmt: skip
    response = httpx.post(f"{server.url}/v1/score", content=json.dumps(items), headers=JSON_HEADERS, timeout=60)
    assert response.status_code == 200, response.text[:300]
    for item, out in zip(items, response.json(), strict=True):
        expected = _expected(item)
        assert {key: out[key] for key in expected} == expected
        assert out.get("step") == item.get("step")  # a 401-digit integer comes back intact
    assert response.json()[2]["final_reward"] is None  # an overflowing ratio is unverifiable, not a number
    assert response.json()[6]["final_reward"] == 1.0


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        (f', "image_size": [{10**400}, 5]', ["body", 0, "image_size", 0]),
        (', "image_size": [-0.0, 5]', ["body", 0, "image_size", 0]),
        (', "image_size": [1e308, 0]', ["body", 0, "image_size", 1]),
        (', "step": 1.5, "total_steps": 3', ["body", 0, "step"]),
        (', "step": 1, "total_steps": 0', ["body", 0, "total_steps"]),
        (', "step": true, "total_steps": 3', ["body", 0, "step"]),
        (', "step": "1", "total_steps": 3', ["body", 0, "step"]),
        (', "iou_threshold": 1e400', ["body"]),  # refused by the JSON reader: no float holds it
        (', "iou_threshold": 0', ["body", 0, "iou_threshold"]),
        (', "data_source": 5', ["body", 0, "data_source"]),
    ],
)
def test_out_of_range_numbers_get_422_naming_the_field(server, extra, loc):
    response = _post(server.url, "/v1/score", b"[" + _item_bytes(extra=extra) + b"]")
    assert response.status_code == 422, response.text[:300]
    assert any(error["loc"][: len(loc)] == loc for error in response.json()["detail"]), response.json()
    _assert_serving(server.url)


def test_integers_longer_than_pythons_digit_limit_get_422(server):
    response = _post(server.url, "/v1/score", b"[" + _item_bytes(extra=', "step": 1' + "0" * 5000) + b"]")
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        (', "iou_threshold": true', ["body", 0, "iou_threshold"]),
        (', "image_size": [true, true]', ["body", 0, "image_size", 0]),
    ],
)
def test_booleans_are_not_numbers(server, extra, loc):
    response = _post(server.url, "/v1/score", b"[" + _item_bytes(extra=extra) + b"]")
    assert response.status_code == 422, response.text[:300]
    assert any(error["loc"][: len(loc)] == loc for error in response.json()["detail"]), response.json()


ODD_SPECS = [
    {"ground_truth": None, "verifier": None, "accuracy_ratio": None, "format_ratio": None},
    {"ground_truth": ["\\boxed{4}"], "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.0},
    {**MATH, "verifier": [None]},
    {**MATH, "verifier": []},
    {**MATH, "verifier": "[]"},
    {**MATH, "verifier": '[{"name": "mathverify", "weight": null}, {"name": null}]'},
    {**MATH, "verifier_parm": [1, 2]},
    {**MATH, "verifier_parm": "not json"},
    {**MATH, "verifier_parm": {"det_reward_ratio": [None]}},
    {**MATH, "accuracy_ratio": [1.0]},
    {**MATH, "accuracy_ratio": True},
    {**MATH, "accuracy_ratio": "1.0"},
    {**MATH, "accuracy_ratio": 0.0, "format_ratio": -0.0},
    {**MATH, "accuracy_ratio": -1.0, "format_ratio": 1.0},
    {**DET_SPEC, "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None}},
    {**DET_SPEC, "verifier_parm": {**DET_PARM, "det_verifier_normalized": "yes"}},
    {},
]


def test_odd_reward_model_values_are_null_with_a_reason_like_in_process(server):
    items = [{"completion": "\\boxed{4}", "reward_model": spec, "image_size": [100, 100], "step": 1, "total_steps": 2}
             for spec in ODD_SPECS]  # fmt: skip
    response = httpx.post(f"{server.url}/v1/score", json=items, timeout=60)
    assert response.status_code == 200, response.text[:300]
    for item, out in zip(items, response.json(), strict=True):
        expected = _expected(item)
        assert {key: out[key] for key in expected} == expected, item["reward_model"]
        assert out["final_reward"] is None and out["unverifiable_reason"], item["reward_model"]


def test_multi_verifier_given_as_a_json_string_is_scored_like_in_process(server):
    entries = [{"name": "mathverify", "weight": 1.0}, {"name": "length", "weight": 0.5,
               "verifier_parm": {"max_length": 40}}, {"name": "tag", "weight": 0.25}]  # fmt: skip
    spec = {"ground_truth": "\\boxed{4}", "verifier": json.dumps(entries), "accuracy_ratio": 1.0, "format_ratio": 0.1}
    listed = {**spec, "verifier": entries}
    texts = ["<think>\nx\n</think>\n<answer>\n\\boxed{4}\n</answer>", "\\boxed{4} <ok>", "x" * 500, ""]
    items = [{"completion": text, "reward_model": form} for text in texts for form in (spec, listed)]
    response = httpx.post(f"{server.url}/v1/score?echo=false", json=items, timeout=60)
    assert response.status_code == 200
    assert response.json() == [_expected(item) for item in items]
    assert response.json()[0]["final_reward"] is not None


def test_an_empty_list_is_answered_with_an_empty_list(server):
    for path in ("/v1/score", "/v1/score?echo=false"):
        response = _post(server.url, path, b" [ ] ")
        assert response.status_code == 200 and response.json() == []


def test_duplicate_keys_take_the_last_value_for_scoring_and_echo_alike(server):
    body = (b'[{"completion": "\\\\boxed{5}", "completion": "\\\\boxed{4}", "step": 1, "step": 2, "total_steps": 4, '
            b'"reward_model": {"verifier": "tag", "ground_truth": "x", "verifier": "mathverify", '
            b'"ground_truth": "\\\\boxed{4}", "accuracy_ratio": 1.0, "format_ratio": 0.0}}]')  # fmt: skip
    response = _post(server.url, "/v1/score", body)
    assert response.status_code == 200
    [out] = response.json()
    assert out["completion"] == "\\boxed{4}" and out["step"] == 2 and out["reward_model"]["verifier"] == "mathverify"
    assert out["accuracy_reward"] == 1.0


@pytest.mark.parametrize(
    "body",
    [
        b"null",
        b"42",
        b'"[]"',
        b"true",
        b"{}",
        b'{"completion": "x"}',
        b"[null]",
        b"[[]]",
        b"[42]",
        b'["x"]',
        b"[{}]",
        b"",
        b"   ",
        b"\xff\xfe",
        b"[1e400]",
    ],
)
def test_bodies_that_are_not_a_list_of_items_get_422(server, body):
    response = _post(server.url, "/v1/score", body)
    assert response.status_code == 422, response.text[:300]
    assert response.json()["detail"] and all("input" not in error for error in response.json()["detail"])
    _assert_serving(server.url)


@pytest.mark.parametrize("body", [b"null", b"42", b'"x"', b"[]", b"[{}]", b"{}", b"", b"\xff"])
def test_judge_bodies_that_are_not_a_payload_get_4xx(server, body):
    response = _post(server.url, "/judge", body)
    assert response.status_code in (400, 422), response.text[:300]
    _assert_serving(server.url)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "multipart/form-data; boundary=x",
     "application/json; charset=latin-1"],
)  # fmt: skip
def test_score_reads_its_json_body_whatever_the_content_type(server, content_type):
    response = _post(server.url, "/v1/score?echo=false", json.dumps([GOOD]).encode(), {"content-type": content_type})
    assert response.status_code == 200 and response.json()[0]["accuracy_reward"] == 1.0


def test_judge_reads_its_json_body_whatever_the_content_type(server):
    body = json.dumps(_judge_payload()).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        response = _post(server.url, "/judge", body, {"content-type": content_type})
        assert response.status_code == 200, response.text[:300]
    assert _post(server.url, "/judge", body, {"content-type": "application/vnd.api+json"}).status_code == 200
    _assert_serving(server.url)


def test_judge_without_a_content_type_is_parsed_as_json_like_the_releases_server(server):
    request = httpx.Request("POST", f"{server.url}/judge", content=json.dumps(_judge_payload()).encode())
    assert "content-type" not in request.headers
    with httpx.Client(timeout=30) as client:
        response = client.send(request)
    assert response.status_code == 200, response.text[:300]


def test_wrong_methods_get_405_and_unknown_paths_404(server):
    for path in ("/v1/score", "/judge"):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            assert httpx.request(method, f"{server.url}{path}", timeout=10).status_code == 405
    for path in ("/health", "/"):
        assert httpx.post(f"{server.url}{path}", json=[GOOD], timeout=10).status_code == 405
    assert httpx.post(f"{server.url}/v1/score/", json=[GOOD], timeout=10).status_code in (404, 307)
    assert httpx.post(f"{server.url}/v2/score", json=[GOOD], timeout=10).status_code == 404
    _assert_serving(server.url)


def test_a_gzip_body_is_refused_with_a_4xx_not_a_500(server):
    body = gzip.compress(json.dumps([GOOD]).encode())
    for path in ("/v1/score", "/judge"):
        response = _post(server.url, path, body, {**JSON_HEADERS, "content-encoding": "gzip"})
        assert 400 <= response.status_code < 500, response.status_code
    _assert_serving(server.url)


def test_an_echo_flag_that_is_not_a_boolean_gets_422(server):
    response = httpx.post(f"{server.url}/v1/score?echo=maybe", json=[GOOD], timeout=10)
    assert response.status_code == 422
    assert httpx.post(f"{server.url}/v1/score?echo=0", json=[GOOD], timeout=10).json()[0].keys() >= {"final_reward"}


# ------------------------------------------------------------------------------------------------ 500s (bugs)

SURROGATE_BUG = (
    "BUG: a lone surrogate (valid JSON as \\ud800) reaching the answer makes the UTF-8 encoding of the response "
    "raise (UnicodeEncodeError / PydanticSerializationError): 500"
)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # the completion is echoed back
        ("/v1/score", b"[" + _item_bytes(completion_json='"\\ud800 \\\\boxed{4}"') + b"]"),
        # an extra field is echoed back
        ("/v1/score", b"[" + _item_bytes(extra=', "note": "\\udfff"') + b"]"),
        # no echo: the unverifiable reason names the user's unknown verifier_parm key verbatim
        ("/v1/score?echo=false", b'[{"completion": "abc", "reward_model": {"ground_truth": "x", "verifier": "length", '
         b'"accuracy_ratio": 1.0, "format_ratio": 0.0, "verifier_parm": {"\\ud800": 1}}}]'),
        # /judge: an unknown det_reward_ratio key in reward_verifier_parm is named verbatim in the reason
        ("/judge", json.dumps(_judge_payload(reward_verifier="detection",
                                             reward_verifier_parm='{"det_reward_ratio": {"\\ud800": 1}}')).encode()),
    ],
)  # fmt: skip
def test_lone_surrogates_are_not_a_500(server, path, body):
    response = _post(server.url, path, body)
    _assert_serving(server.url)
    assert response.status_code == 200, response.status_code
    assert response.json()


def test_lone_surrogates_that_are_not_echoed_are_scored_like_in_process(server):
    body = b"[" + _item_bytes(completion_json='"\\ud800 \\\\boxed{4}"') + b"]"
    response = _post(server.url, "/v1/score?echo=false", body)
    assert response.status_code == 200
    assert response.json() == [score_sample("\ud800 \\boxed{4}", MATH)]
    judge = _post(
        server.url, "/judge", json.dumps(_judge_payload(response="\ud800 \\boxed{4}", prompt="\udfff")).encode()
    )
    assert judge.status_code == 200 and judge.json()["rewards"]["accuracy_reward"] == 1.0


 # fmt: skip
@pytest.mark.parametrize("extra", [', "note": 1e400', ', "note": [-1e999]'])
def test_numbers_that_overflow_to_infinity_get_422_not_500(server, extra):
    response = _post(server.url, "/v1/score", b"[" + _item_bytes(extra=extra) + b"]")
    _assert_serving(server.url)
    assert response.status_code == 422, response.status_code


@pytest.mark.parametrize("depth", [970, 5000])
def test_judge_deeply_nested_reward_verifier_parm_is_not_a_500(server, depth):
    parm = '{"x": ' + "[" * depth + "]" * depth + "}"
    response = _post(server.url, "/judge", json.dumps(_judge_payload(reward_verifier_parm=parm)).encode())
    _assert_serving(server.url)
    assert response.status_code in (200, 422), response.status_code


 # fmt: skip
def test_judge_image_grid_with_a_huge_integer_is_not_a_500(server):
    parm = '{"image_grid_thw": [[1, 1' + "0" * 400 + ", 1036]]}"
    response = _post(server.url, "/judge", json.dumps(_judge_payload(reward_verifier_parm=parm)).encode())
    _assert_serving(server.url)
    assert response.status_code == 200, response.status_code


# ------------------------------------------------------------------------------------------------ /judge, release


def _release_parm(**overrides) -> str:
    """reward_verifier_parm as the release's trainer sends it: the row's verifier_parm plus call context."""
    parm = {**DET_PARM, "verifier_style": "rule", "is_training": True, "step": 1, "total_steps": 460,
            "image_grid_thw": [[1, 672, 1036]], "image_path": ["images/000001.jpg"], "query": None}  # fmt: skip
    parm.update(overrides)
    return json.dumps(parm)


def _release_extras() -> dict:
    return {"fmt_ratio": 0.1, "len_ratio": 0.0, "iter": 1, "data_index": 1234, "accuracy_ratio": 1.0}


def test_judge_release_detection_payload_with_every_extra_field(server):
    payload = _judge_payload(
        response=DET_RESPONSE, solution=DET_GOLD, answer=DET_GOLD, reward_verifier="detection",
        data_source="object365_train", reward_verifier_parm=_release_parm(), **_release_extras(),
    )  # fmt: skip
    response = httpx.post(f"{server.url}/judge", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    rewards = response.json()["rewards"]
    expected = score_sample(DET_RESPONSE, DET_SPEC, image_size=(1036, 672), step=1, total_steps=460)
    assert expected["accuracy_reward"] > 0.5
    assert (rewards["final_reward"], rewards["accuracy_reward"], rewards["format_reward"]) == (
        expected["final_reward"],
        expected["accuracy_reward"],
        expected["format_reward"],
    )
    assert all(isinstance(value, float) for value in rewards.values())  # the release's client logs each as a number


def test_judge_release_math_payload_with_null_detection_fields(server):
    parm = _release_parm(det_verifier_normalized=None, det_reward_ratio=None, step=7)
    responses = ["<think>\nx\n</think>\n<answer>\n\\boxed{4}\n</answer>", "\\boxed{4}", "\\boxed{5}", ""]
    for text in responses:
        payload = _judge_payload(response=text, reward_verifier_parm=parm, **{**_release_extras(), "fmt_ratio": 0.0})
        response = httpx.post(f"{server.url}/judge", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        spec = {**MATH, "answer": "4", "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None}}
        expected = score_sample(text, spec, step=7, total_steps=460)
        rewards = response.json()["rewards"]
        assert (rewards["final_reward"], rewards["accuracy_reward"], rewards["format_reward"]) == (
            expected["final_reward"],
            expected["accuracy_reward"],
            expected["format_reward"],
        )


@pytest.mark.parametrize(("step", "total"), [(3.0, 460), (3, 460.0)])
def test_judge_integral_float_step_is_progress(server, step, total):
    payload = _judge_payload(
        response=DET_RESPONSE, solution=DET_GOLD, reward_verifier="detection",
        reward_verifier_parm=_release_parm(step=step, total_steps=total), fmt_ratio=0.1,
    )  # fmt: skip
    rewards = httpx.post(f"{server.url}/judge", json=payload, timeout=60).json()["rewards"]
    expected = score_sample(DET_RESPONSE, DET_SPEC, image_size=(1036, 672), step=3, total_steps=460)
    assert rewards["final_reward"] == expected["final_reward"]


def test_judge_multi_verifier_given_as_a_json_string_is_scored_like_in_process(server):
    entries = [{"name": "mathverify", "weight": 1.0}, {"name": "length", "weight": 0.5,
               "verifier_parm": {"max_length": 400}}]  # fmt: skip
    text = "<think>\nx\n</think>\n<answer>\n\\boxed{4}\n</answer>"
    payload = _judge_payload(response=text, reward_verifier=json.dumps(entries), format_ratio=0.1)
    response = httpx.post(f"{server.url}/judge", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    spec = {"answer": "4", "ground_truth": "\\boxed{4}", "verifier": entries, "verifier_parm": {},
            "accuracy_ratio": 1.0, "format_ratio": 0.1}  # fmt: skip
    expected = score_sample(text, spec)
    rewards = response.json()["rewards"]
    assert expected["final_reward"] == 1.0 and rewards["final_reward"] == expected["final_reward"]
    assert rewards["mathverify_accuracy_reward"] == expected["mathverify_accuracy"] == 1.0
    assert rewards["length_accuracy_reward"] == expected["length_accuracy"]


@pytest.mark.parametrize(("step", "total"), [("three", 460), (3, "460x"), (3, 0), (3, -1), (None, 460), (True, 460)])
def test_judge_unusable_progress_is_null_with_a_reason_never_zero(server, step, total):
    payload = _judge_payload(
        response=DET_RESPONSE, solution=DET_GOLD, reward_verifier="detection",
        reward_verifier_parm=_release_parm(step=step, total_steps=total), fmt_ratio=0.1,
    )  # fmt: skip
    response = httpx.post(f"{server.url}/judge", json=payload, timeout=60)
    assert response.status_code == 200
    answer = response.json()
    assert answer["rewards"]["final_reward"] is None and answer["rewards"]["accuracy_reward"] is None
    assert "step" in answer["unverifiable_reason"]
    assert answer["rewards"]["format_reward"] == 1.0  # the format is still known


def test_judge_math_ignores_progress_it_does_not_need(server):
    for total in (0, -5, "x", None):
        parm = _release_parm(det_verifier_normalized=None, det_reward_ratio=None, total_steps=total)
        response = httpx.post(f"{server.url}/judge", json=_judge_payload(reward_verifier_parm=parm), timeout=60)
        assert response.status_code == 200 and response.json()["rewards"]["accuracy_reward"] == 1.0


@pytest.mark.parametrize(
    "changes",
    [{"format_ratio": True}, {"accuracy_ratio": 1e308, "format_ratio": 1e308}, {"format_ratio": -0.0},
     {"accuracy_ratio": 0, "format_ratio": 0}, {"reward_verifier": ""}, {"reward_verifier": "[]"},
     {"reward_verifier_parm": "{\"step\": 1e400, \"total_steps\": 10}"}, {"reward_verifier_parm": "{\"x\": NaN}"},
     {"data_source": "", "prompt": "", "answer": "", "solution": ""}],
)  # fmt: skip
def test_judge_odd_numbers_and_strings_are_never_a_500(server, changes):
    response = httpx.post(f"{server.url}/judge", json=_judge_payload(**changes), timeout=60)
    assert response.status_code in (200, 422), response.text[:300]
    if response.status_code == 200:
        rewards = response.json()["rewards"]
        assert rewards["final_reward"] is None or 0.0 <= rewards["final_reward"] <= 1.0
        if rewards["final_reward"] is None:
            assert response.json()["unverifiable_reason"]
    _assert_serving(server.url)


# ------------------------------------------------------------------------------------------------ raw HTTP


def _request_bytes(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def _read_responses(sock: socket.socket, count: int, timeout: float = 60) -> list[tuple[int, bytes]]:
    """`count` HTTP/1.1 responses with Content-Length bodies, read off one socket in order."""
    sock.settimeout(timeout)
    buffer, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} of {count} responses"
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers["content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of a body"
            buffer += chunk
        out.append((int(lines[0].split()[1]), buffer[:length]))
        buffer = buffer[length:]
    return out


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_pipelined_keep_alive_requests_are_answered_in_order(server):
    bodies = [json.dumps([{"completion": f"\\boxed{{{n % 7}}}", "reward_model": MATH, "n": n}]).encode()
              for n in range(40)]  # fmt: skip
    with _connect(server) as sock:
        sock.sendall(b"".join(_request_bytes("/v1/score", body) for body in bodies))
        answers = _read_responses(sock, len(bodies))
    for n, (status, body) in enumerate(answers):
        [out] = json.loads(body)
        assert status == 200 and out["n"] == n and out["accuracy_reward"] == float(n % 7 == 4)


def test_many_requests_on_one_keep_alive_connection(server):
    with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=1)) as client:
        for n in range(60):
            item = {"completion": f"<ok> {n}" if n % 2 else "nope", "reward_model": TAG}
            path = "/judge" if n % 5 == 0 else "/v1/score?echo=false"
            if path == "/judge":
                payload = _judge_payload(response=item["completion"], solution="<ok>", reward_verifier="tag",
                                         accuracy_ratio=1.0, format_ratio=0.0)  # fmt: skip
                assert client.post(path, json=payload).json()["rewards"]["final_reward"] == float(n % 2)
            else:
                assert client.post(path, json=[item]).json()[0]["final_reward"] == float(n % 2)


def test_many_concurrent_connections_each_get_their_own_answers(server):
    sockets = []
    try:
        for n in range(80):
            sock = _connect(server)
            sockets.append(sock)
            items = [{"completion": f"\\boxed{{{(n + k) % 5}}}", "reward_model": MATH, "tag": [n, k]} for k in range(3)]
            sock.sendall(_request_bytes("/v1/score", json.dumps(items).encode()))
        for n, sock in enumerate(sockets):
            [(status, body)] = _read_responses(sock, 1)
            answer = json.loads(body)
            assert status == 200 and [out["tag"] for out in answer] == [[n, k] for k in range(3)]
            assert [out["accuracy_reward"] for out in answer] == [float((n + k) % 5 == 4) for k in range(3)]
    finally:
        for sock in sockets:
            sock.close()
    _assert_serving(server.url)


def test_clients_that_vanish_mid_upload_or_send_half_headers_do_not_stall_the_server(server):
    idle = []
    try:
        for n in range(30):
            sock = _connect(server)
            body = json.dumps([GOOD] * 50).encode()
            request = _request_bytes("/v1/score", body)
            if n % 3 == 0:
                sock.sendall(request[: len(request) // 2])  # Content-Length promises more than comes
                sock.close()
            elif n % 3 == 1:
                sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4000\r\n[{")
                sock.close()
            else:
                sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Le")  # half a header, left open
                idle.append(sock)
        started = time.monotonic()
        _assert_serving(server.url)  # while 10 connections hang mid-header
        assert time.monotonic() - started < 10
    finally:
        for sock in idle:
            sock.close()
    _assert_serving(server.url)


def test_clients_that_vanish_mid_scoring_do_not_stop_the_scoring_thread(server):
    before = server.health()["scored"]
    for n in range(5):
        sock = _connect(server)
        items = [{"completion": f"\\boxed{{{n}}} {k}", "reward_model": MATH} for k in range(20)]
        if n == 0:
            items.append({"completion": SLOW, "reward_model": MATH})  # keeps the worker busy up to the time limit
        sock.sendall(_request_bytes("/v1/score", json.dumps(items).encode()))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    started = time.monotonic()
    health = httpx.get(f"{server.url}/health", timeout=5)  # the event loop answers while the pool is busy
    assert health.status_code == 200 and time.monotonic() - started < 2
    _assert_serving(server.url)
    deadline = time.monotonic() + 30
    while server.health()["scored"] < before + 5 * 20 + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.health()["scored"] >= before + 5 * 20 + 1  # the abandoned requests were scored all the same
    _assert_serving(server.url)


# ------------------------------------------------------------------------------------------------ the client


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    """A reward server gone wrong; `server.mode` picks how (see `FakeServer`)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"status": "ok", "version": __version__}).encode())

    def do_POST(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        count = len(json.loads(body))
        with fake.lock:
            fake.requests += 1
            number = fake.requests
        mode = fake.mode
        score = {"final_reward": 1.0, "format_reward": 1.0, "accuracy_reward": 1.0, "unverifiable_reason": None}
        if mode == "proxy_flaky":  # every other request goes to the real server, the rest fail
            if number % 2:
                self._send(503, b'{"detail": "overloaded"}')
                return
            real = httpx.post(f"{fake.upstream}{self.path}", content=body, headers=JSON_HEADERS, timeout=30)
            self._send(real.status_code, real.content)
        elif mode == "short":
            self._send(200, json.dumps([score] * (count - 1)).encode())
        elif mode == "long":
            self._send(200, json.dumps([score] * (count + 1)).encode())
        elif mode == "500":
            self._send(500, b"Internal Server Error")
        elif mode == "garbage":
            self._send(200, b'[{"final_reward": 1.0,')
        elif mode == "html":
            self._send(200, b"<html>proxy error</html>")
        elif mode == "object":
            self._send(200, json.dumps({"final_reward": 1.0}).encode())
        elif mode == "hang":
            fake.release.wait(10)
            self.close_connection = True
        elif mode == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif mode == "string_reward":
            self._send(200, json.dumps([{**score, "final_reward": "1.0"}] * count).encode())
        elif mode == "bare":
            self._send(200, json.dumps([{"final_reward": 1.0}] * count).encode())
        elif mode == "nan":
            self._send(200, json.dumps([{**score, "final_reward": float("nan")}] * count).encode())
        else:
            raise AssertionError(mode)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a reset connection is the point of some modes
        pass


class FakeServer:
    """A standard-library HTTP server on 127.0.0.1 that misbehaves as `mode` says; /health always answers ok."""

    def __init__(self, mode: str, upstream: str | None = None):
        self.mode, self.upstream = mode, upstream
        self.requests = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = _QuietServer(("127.0.0.1", 0), _FakeHandler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _client_batch() -> dict:
    """Ten distinct completions whose rewards differ, so a mixed-up order shows."""
    completions, specs = [], []
    for n in range(10):
        if n % 2:
            completions.append("<ok>" * (n % 3) + f" {n}")
            specs.append(TAG)
        else:
            completions.append(f"<think>\n{n}\n</think>\n<answer>\n\\boxed{{{4 if n % 4 == 0 else n}}}\n</answer>")
            specs.append(MATH_FMT)
    return {"completions": completions, "reward_model": specs}


def _call(router: RemoteRewardRouter, batch: dict) -> tuple[list, dict]:
    return call_router(router, **batch)


def _router(urls: list[str], **options) -> RemoteRewardRouter:
    defaults = {"batch_size": 2, "backoff": 0.0, "health_interval": 0.1, "timeout": 5.0, "retries": 3}
    return RemoteRewardRouter(urls, **{**defaults, **options})


@pytest.fixture(scope="module")
def local_rewards() -> list:
    return RewardRouter(workers=0)(**_client_batch())


FAILING_MODES = ["short", "long", "500", "garbage", "html", "object", "hang", "reset"]


@pytest.mark.parametrize("mode", FAILING_MODES)
def test_the_client_fails_over_from_a_broken_server_and_keeps_every_sample_in_place(server, local_rewards, mode):
    with FakeServer(mode) as fake:
        router = _router([fake.url, server.url], timeout=0.5 if mode == "hang" else 5.0)
        rewards, metrics = _call(router, _client_batch())
    assert rewards == local_rewards
    assert fake.requests >= 1 and router.stats.failovers >= 1 and router.stats.failed == 0
    assert metrics["rewards/remote_failover_count"] >= 1 and metrics["rewards/remote_failed_count"] == 0


@pytest.mark.parametrize("mode", ["short", "500", "garbage", "hang"])
def test_a_sample_whose_only_server_is_broken_is_unverifiable_never_a_number(local_rewards, mode):
    with FakeServer(mode) as fake:
        router = _router([fake.url], timeout=0.3, retries=2)
        rewards, metrics = _call(router, _client_batch())
    assert rewards == [None] * len(local_rewards)
    assert all(fake.url in score["unverifiable_reason"] for score in router.last_scores)
    assert metrics["rewards/remote_failed_count"] == len(local_rewards) and router.stats.failed == len(local_rewards)


def test_a_flaky_path_to_the_real_server_keeps_the_order_of_samples(server):
    batch = {"completions": [], "reward_model": []}
    for n in range(30):
        batch["completions"].append(f"\\boxed{{{n % 6}}}" if n % 3 else f"<ok> {n}" * (n % 2))
        batch["reward_model"].append(MATH if n % 3 else TAG)
    expected = RewardRouter(workers=0)(**batch)
    with FakeServer("proxy_flaky", upstream=server.url) as proxy:
        router = _router([proxy.url], batch_size=3, retries=4, max_in_flight=4)
        rewards, _ = _call(router, batch)
    assert rewards == expected and len(set(map(str, expected))) > 1
    assert router.stats.failovers >= 1


 # fmt: skip
@pytest.mark.parametrize("mode", ["string_reward", "nan", "bare"])
def test_the_client_refuses_score_objects_that_are_not_scores(server, local_rewards, mode):
    with FakeServer(mode) as fake:
        router = _router([fake.url, server.url])
        rewards, _ = _call(router, _client_batch())
    assert rewards == local_rewards


def test_a_real_server_slower_than_the_client_timeout_leaves_samples_unverifiable_never_wrong(server):
    batch = {"completions": [SLOW, "\\boxed{4}", "\\boxed{5}", "<ok>"], "reward_model": [MATH, MATH, MATH, TAG]}
    expected = [None, 1.0, 0.0, 1.0]
    router = _router([server.url], batch_size=1, timeout=1.0, retries=1)
    started = time.monotonic()
    rewards, metrics = _call(router, batch)
    assert time.monotonic() - started < 10
    if rewards[0] is not None:
        pytest.skip("math-verify scored the slow input within 1 s on this machine")
    assert "no answer within 1 s" in router.last_scores[0]["unverifiable_reason"]
    for reward, want, scores in zip(rewards, expected, router.last_scores, strict=True):
        assert reward == want or (reward is None and scores["unverifiable_reason"])
    assert metrics["rewards/remote_failed_count"] >= 1
    deadline = time.monotonic() + 2 * TIME_LIMIT_S + 10  # the server gets through the slow input, and serves again
    while time.monotonic() < deadline and any(
        server.health()["load"][key] for key in ("scoring_completions", "queued_completions")
    ):
        time.sleep(0.2)
    _assert_serving(server.url)


 # fmt: skip
def test_the_client_sends_completions_with_lone_surrogates(server):
    completion = "\ud800 \\boxed{4}"
    router = _router([server.url])
    rewards, _ = _call(router, {"completions": [completion], "reward_model": [MATH]})
    assert rewards == RewardRouter(workers=0)(completions=[completion], reward_model=[MATH]) == [1.0]
    assert router.score_items([{"completion": completion, "reward_model": MATH}])[0]["final_reward"] == 1.0


def test_the_client_keeps_order_across_many_small_requests_next_to_another_caller(server):
    batch = {"completions": [f"\\boxed{{{n % 9}}}" for n in range(60)], "reward_model": [MATH] * 60}
    with ThreadPoolExecutor(1) as executor:  # a second, independent caller on the same server meanwhile
        other = executor.submit(lambda: httpx.post(f"{server.url}/v1/score", json=[GOOD] * 30, timeout=60))
        router = _router([server.url], batch_size=1, max_in_flight=8)
        rewards, _ = _call(router, batch)
        assert other.result().status_code == 200
    assert rewards == [float(n % 9 == 4) for n in range(60)]


def test_a_request_queued_behind_a_hanging_batch_is_answered_within_the_batch_budget():
    budget = 1.5

    def timed_post(url: str, completion: str) -> tuple[list, float]:
        started = time.monotonic()
        answer = httpx.post(f"{url}/v1/score?echo=false", json=[{"completion": completion, "reward_model": MATH}],
                            timeout=30).json()  # fmt: skip
        return answer, time.monotonic() - started

    with running_server(workers=1, extra_args=["--time-limit", "30", "--batch-budget", str(budget)]) as limited:
        with ThreadPoolExecutor(2) as executor:
            first = executor.submit(timed_post, limited.url, SLOW)
            time.sleep(0.3)  # the first batch is being scored
            second = executor.submit(timed_post, limited.url, SLOW + " ")
            (first_answer, _), (second_answer, second_seconds) = first.result(), second.result()
    if first_answer[0]["accuracy_reward"] is not None or second_answer[0]["accuracy_reward"] is not None:
        pytest.skip("math-verify scored the slow input within the budget on this machine")
    assert second_answer[0]["unverifiable_reason"]
    assert second_seconds < budget + 0.9
