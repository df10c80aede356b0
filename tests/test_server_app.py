"""The reward server over real HTTP: a `triune serve-rewards` subprocess on 127.0.0.1, talked to with httpx."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pyarrow.parquet as pq
import pytest
from PIL import Image

from triune_trl.rewards import score_sample
from triune_trl.server.protocol import RELEASE_DETECTION_NAMES

from .server_helpers import DET_PARM, MATH_SPEC, expected_scores, running_server

TOKEN = "tr-7f3c9a1e5b"


@pytest.fixture(scope="module")
def server():
    with running_server(workers=1) as running:
        yield running


@pytest.fixture(scope="module")
def guarded_server():
    """A token, small limits and one allowed browser origin."""
    extra = ["--max-body-mb", "1", "--max-batch-items", "10", "--cors-origin", "https://dash.example"]
    with running_server(workers=0, token=TOKEN, extra_args=extra) as running:
        yield running


def _completions(gold: str) -> list[str]:
    return [
        gold,
        f"<think>\nchecking\n</think>\n<answer>\n{gold}\n</answer>",
        f"<think>\nchecking\n</think>\n<answer>\n{gold[: len(gold) // 2]}\n</answer>",
        "no answer at all",
        "",
    ]


@pytest.fixture(scope="module")
def sample_items(sample_data_dir) -> list[dict]:
    """Score items built from every bundled train file (every verifier the sample covers), 5 completions a row."""
    items = []
    for path in sorted((sample_data_dir / "train").glob("*.parquet")):
        table = pq.read_table(path).to_pylist()
        for row in table[:3]:
            item = {"reward_model": row["reward_model"], "data_source": row["data_source"]}
            if row.get("images"):
                item["image_size"] = list(Image.open(io.BytesIO(row["images"][0]["bytes"])).size)
            for number, completion in enumerate(_completions(row["reward_model"]["ground_truth"])):
                items.append({**item, "completion": completion, "step": 1 + number, "total_steps": 10})
    return items


_expected = expected_scores


def test_remote_scores_equal_in_process_scores(server, sample_items):
    assert len({item["data_source"] for item in sample_items}) >= 8
    response = httpx.post(f"{server.url}/v1/score", json=sample_items, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer) == len(sample_items)
    verified = 0
    for item, out in zip(sample_items, answer, strict=True):
        expected = _expected(item)
        assert {key: out[key] for key in item} == item  # the input object comes back as sent
        assert {key: out[key] for key in expected} == expected
        assert set(out) == set(item) | set(expected)
        verified += expected["accuracy_reward"] is not None
    assert verified >= len(sample_items) // 2  # the batch is mostly verifiable: equality is not vacuous

    scores_only = httpx.post(f"{server.url}/v1/score?echo=false", json=sample_items, timeout=120).json()
    pairs = zip(sample_items, answer, strict=True)
    assert scores_only == [{key: out[key] for key in out if key not in item} for item, out in pairs]


def test_item_iou_threshold_overrides_the_servers(server, sample_items):
    detection = [item for item in sample_items if item["reward_model"]["verifier"] == "detection"][:5]
    assert detection
    items = [{**item, "iou_threshold": 0.5} for item in detection]
    answer = httpx.post(f"{server.url}/v1/score?echo=false", json=items, timeout=60).json()
    assert answer == [_expected(item) for item in items]


def test_concurrent_clients_get_their_own_results_in_order(server, sample_items):
    batches = [sample_items[start::7] for start in range(7)]

    def post(batch):
        return httpx.post(f"{server.url}/v1/score?echo=false", json=batch, timeout=120).json()

    with ThreadPoolExecutor(7) as executor:
        answers = list(executor.map(post, batches))
    for batch, answer in zip(batches, answers, strict=True):
        assert [out["final_reward"] for out in answer] == [_expected(item)["final_reward"] for item in batch]


def test_unscorable_items_are_null_with_a_reason_not_zero(server):
    items = [
        {"completion": "\\boxed{4}", "reward_model": {**MATH_SPEC, "verifier": "no_such_verifier"}},
        {"completion": "\\boxed{4}", "reward_model": {"verifier": "mathverify"}},  # no ground_truth
        {"completion": "<answer>\n[]\n</answer>", "reward_model": {"ground_truth": "<answer>\n[]\n</answer>",
         "verifier": "detection", "verifier_parm": DET_PARM, "accuracy_ratio": 1.0, "format_ratio": 0.1}},
    ]  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/score?echo=false", json=items, timeout=60).json()
    for out in answer:
        assert out["final_reward"] is None and out["accuracy_reward"] is None
        assert out["unverifiable_reason"]
    assert "no_such_verifier" in answer[0]["unverifiable_reason"]


def test_runaway_completion_is_stopped_at_the_time_limit_and_the_server_keeps_serving(tmp_path):
    nested = "\\boxed{" + "\\frac{1}{" * 3000 + "2" + "}" * 3000 + "}"
    with running_server(workers=1, extra_args=["--time-limit", "1"]) as limited:
        started = time.monotonic()
        response = httpx.post(
            f"{limited.url}/v1/score?echo=false", json=[{"completion": nested, "reward_model": MATH_SPEC}], timeout=60
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        [out] = response.json()
        if out["accuracy_reward"] is not None:
            pytest.skip("math-verify answered this input within the time limit on this machine")
        assert "time limit" in out["unverifiable_reason"] or "timeout" in out["unverifiable_reason"].lower()
        assert elapsed < 1 + 5  # one time limit plus a worker restart, never a hung request
        ok = httpx.post(f"{limited.url}/v1/score?echo=false", json=[{"completion": "\\boxed{4}",
                        "reward_model": MATH_SPEC}], timeout=60)  # fmt: skip
        assert ok.json()[0]["accuracy_reward"] == 1.0
        assert limited.health()["statuses"].get("timeout", 0) + limited.health()["statuses"].get("crash", 0) >= 1


def test_a_batch_of_runaway_completions_is_answered_within_the_batch_budget():
    nested = "\\boxed{" + "\\frac{1}{" * 3000 + "2" + "}" * 3000 + "}"
    items = [{"completion": nested + " " * number, "reward_model": MATH_SPEC} for number in range(6)]
    with running_server(workers=1, extra_args=["--time-limit", "30", "--batch-budget", "1.5"]) as limited:
        started = time.monotonic()
        answer = httpx.post(f"{limited.url}/v1/score?echo=false", json=items, timeout=60).json()
        elapsed = time.monotonic() - started
        if any(out["accuracy_reward"] is not None for out in answer):
            pytest.skip("math-verify answered these inputs quickly on this machine")
        assert elapsed < 1.5 + 5  # not 6 x 30 s
        assert all("scoring budget of" in out["unverifiable_reason"] for out in answer)
        assert limited.health()["statuses"]["budget"] == 6
        ok = httpx.post(f"{limited.url}/v1/score?echo=false", json=[{"completion": "\\boxed{4}",
                        "reward_model": MATH_SPEC}], timeout=60)  # fmt: skip
        assert ok.json()[0]["accuracy_reward"] == 1.0


# ------------------------------------------------------------------------------------------------ the release's API


def test_root_answers_like_the_release(server):
    assert httpx.get(f"{server.url}/").json() == {"message": "Reward Judge Server"}


def _judge(url: str, **fields) -> httpx.Response:
    payload = {"response": "", "prompt": "a prompt", "answer": "", "solution": "", "data_source": "src",
               "reward_verifier": "mathverify", "reward_verifier_parm": "{}"}  # fmt: skip
    payload.update(fields)
    return httpx.post(f"{url}/judge", json=payload, timeout=60)


def test_judge_math_payload_uses_the_release_default_ratios(server):
    completion = "<think>\nx\n</think>\n<answer>\n\\boxed{4}\n</answer>"
    parm = json.dumps({"step": 3, "total_steps": 10})
    response = _judge(server.url, response=completion, answer="4", solution="\\boxed{4}", reward_verifier_parm=parm)
    assert response.status_code == 200
    rewards = response.json()["rewards"]
    # no ratios in the payload: the release's defaults, accuracy 1.0 and format 0.1
    assert rewards == {"format_reward": 1.0, "accuracy_reward": 1.0, "final_reward": pytest.approx(1.0)}
    wrong = _judge(server.url, response="\\boxed{5}", solution="\\boxed{4}", accuracy_ratio=1.0, format_ratio=0.0)
    assert wrong.json() == {"rewards": {"format_reward": 0.0, "accuracy_reward": 0.0, "final_reward": 0.0}}


def test_judge_detection_payload_as_the_release_trainer_sends_it(server):
    gold = ("<answer>\n[{'bbox_2d': [0, 466, 43, 574], 'label': 'car'}, "
            "{'bbox_2d': [15, 472, 112, 589], 'label': 'car'}]\n</answer>")  # fmt: skip
    response_text = ("<think>\ntwo cars\n</think>\n<answer>\n[{'bbox_2d': [0,313,45,386], 'label': 'Car'},\n"
                     " {'bbox_2d': [16,317,116,396], 'label': 'Car'}]\n</answer>")  # fmt: skip
    parm = {**DET_PARM, "verifier_style": "rule", "is_training": True, "step": 1, "total_steps": 460,
            "image_grid_thw": [[1, 672, 1036]], "image_path": ["images/x.jpg"], "query": None}  # fmt: skip
    response = _judge(server.url, response=response_text, solution=gold, reward_verifier="detection",
                      reward_verifier_parm=json.dumps(parm), fmt_ratio=0.1, data_source="object365_train")  # fmt: skip
    assert response.status_code == 200, response.text
    rewards = response.json()["rewards"]
    spec = {"ground_truth": gold, "verifier": "detection", "verifier_parm": DET_PARM, "accuracy_ratio": 1.0,
            "format_ratio": 0.1}  # fmt: skip
    # image_grid_thw carries the image's height and width in pixels, as the release's trainer fills it
    expected = score_sample(response_text, spec, image_size=(1036, 672), step=1, total_steps=460)
    assert expected["accuracy_reward"] > 0.5
    assert rewards["final_reward"] == expected["final_reward"]
    assert rewards["accuracy_reward"] == expected["accuracy_reward"]
    assert rewards["format_reward"] == 1.0
    for ours, release in RELEASE_DETECTION_NAMES.items():
        assert rewards[f"{release}_reward"] == expected[ours]
    assert "report_iou_99_label_match_recall_reward" in rewards and "pure_iou_score_max_label_reward" in rewards


def test_judge_unverifiable_is_null_with_a_reason(server):
    answer = _judge(server.url, response="\\boxed{4}", solution="\\boxed{4}", reward_verifier="nope").json()
    assert answer["rewards"]["final_reward"] is None
    assert "nope" in answer["unverifiable_reason"]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"solution": None}, ["body", "solution"]),  # None: the field is left out
        ({"reward_verifier_parm": "{not json"}, ["body", "reward_verifier_parm"]),
        ({"reward_verifier_parm": "[1, 2]"}, ["body", "reward_verifier_parm"]),
        ({"format_ratio": "lots"}, ["body", "format_ratio"]),
        ({"response": 12}, ["body", "response"]),
    ],
)
def test_judge_rejects_malformed_payloads_naming_the_field(server, changes, loc):
    payload = {"response": "", "prompt": "", "answer": "", "solution": "", "data_source": "",
               "reward_verifier": "mathverify", "reward_verifier_parm": "{}"}  # fmt: skip
    payload.update(changes)
    payload = {key: value for key, value in payload.items() if value is not None}
    response = httpx.post(f"{server.url}/judge", json=payload, timeout=30)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]
    assert _judge(server.url, response="\\boxed{4}", solution="\\boxed{4}").status_code == 200


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"completion": "x", "reward_model": MATH_SPEC}, ["body"]),  # an object, not a list
        ([{"completion": 7, "reward_model": MATH_SPEC}], ["body", 0, "completion"]),
        ([{"completion": "x"}], ["body", 0, "reward_model"]),
        ([{"completion": "x", "reward_model": "spec"}], ["body", 0, "reward_model"]),
        ([{"completion": "x", "reward_model": MATH_SPEC, "image_size": [0, 5]}], ["body", 0, "image_size", 0]),
        ([{"completion": "x", "reward_model": MATH_SPEC, "image_size": [5]}], ["body", 0, "image_size"]),
        ([{"completion": "x", "reward_model": MATH_SPEC}, {"completion": "x", "reward_model": MATH_SPEC, "step": 3}],
         ["body", 1]),
        ([{"completion": "x", "reward_model": MATH_SPEC, "step": -1, "total_steps": 4}], ["body", 0, "step"]),
        ([{"completion": "x", "reward_model": MATH_SPEC, "iou_threshold": "sometimes"}], ["body", 0, "iou_threshold"]),
    ],
)  # fmt: skip
def test_malformed_score_requests_get_422_naming_the_field_and_the_server_keeps_serving(server, body, loc):
    response = httpx.post(f"{server.url}/v1/score", json=body, timeout=30)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"][: len(loc)] == loc for error in errors), errors
    assert all("input" not in error for error in errors)  # model output is never echoed back in an error
    ok = httpx.post(f"{server.url}/v1/score", json=[{"completion": "\\boxed{4}", "reward_model": MATH_SPEC}])
    assert ok.status_code == 200 and ok.json()[0]["accuracy_reward"] == 1.0


@pytest.mark.parametrize(
    "body",
    [b"[{not json", b'[{"completion": "x", "reward_model": {}, "note": NaN}]', b"[" * 100_000 + b"]" * 100_000],
)
def test_invalid_json_gets_422(server, body):
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{server.url}/v1/score", content=body, headers=headers, timeout=30)
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"][0]["msg"]


def test_judge_rejects_non_finite_ratios(server):
    body = (b'{"response": "", "prompt": "", "answer": "", "solution": "", "data_source": "", '
            b'"reward_verifier": "mathverify", "reward_verifier_parm": "{}", "format_ratio": NaN}')  # fmt: skip
    response = httpx.post(f"{server.url}/judge", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "NaN is not a JSON value" in response.json()["detail"][0]["msg"]


# ------------------------------------------------------------------------------------------------ security


def _score(url: str, headers: dict | None = None, items: list | None = None) -> httpx.Response:
    items = items if items is not None else [{"completion": "\\boxed{4}", "reward_model": MATH_SPEC}]
    return httpx.post(f"{url}/v1/score", json=items, headers=headers or {}, timeout=30)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}],
)  # fmt: skip
def test_missing_or_wrong_token_gets_401(guarded_server, headers):
    response = _score(guarded_server.url, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    judge = httpx.post(f"{guarded_server.url}/judge", json={}, headers=headers)
    assert judge.status_code == 401  # before the payload is even looked at


def test_right_token_gets_200_and_health_stays_open(guarded_server):
    response = _score(guarded_server.url, {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.json()[0]["accuracy_reward"] == 1.0
    assert httpx.get(f"{guarded_server.url}/health").status_code == 200
    assert httpx.get(f"{guarded_server.url}/").status_code == 200
    health = guarded_server.health()
    assert health["auth"] is True and health["rejected"]["unauthorized"] >= 1


def test_oversized_bodies_and_batches_get_413_and_the_server_keeps_serving(guarded_server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = [{"completion": "x" * (600 * 1024), "reward_model": MATH_SPEC}] * 2  # 1.2 MB against a 1 MiB limit
    assert _score(guarded_server.url, auth, big).status_code == 413

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        yield b"["
        for _ in range(40):
            yield json.dumps({"completion": "y" * 50_000, "reward_model": MATH_SPEC}).encode() + b","
        yield b"{}]"

    streamed = httpx.post(f"{guarded_server.url}/v1/score", content=chunks(), headers=auth, timeout=30)
    assert streamed.status_code == 413
    many = [{"completion": "\\boxed{4}", "reward_model": MATH_SPEC}] * 11  # the limit is 10 items
    too_many = _score(guarded_server.url, auth, many)
    assert too_many.status_code == 413 and "--max-batch-items" in too_many.json()["detail"]
    assert _score(guarded_server.url, auth, many[:10]).status_code == 200
    assert guarded_server.health()["rejected"]["too_large"] >= 3


def test_no_cors_headers_unless_an_origin_is_configured(server, guarded_server):
    origin = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in httpx.get(f"{server.url}/health", headers=origin).headers
    preflight = httpx.options(f"{server.url}/v1/score", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    allowed = httpx.get(f"{guarded_server.url}/health", headers={"Origin": "https://dash.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
    other = httpx.get(f"{guarded_server.url}/health", headers=origin)
    assert other.headers.get("access-control-allow-origin") != "*"
    assert "access-control-allow-origin" not in other.headers


def test_health_reports_version_verifiers_and_load(server):
    health = server.health()
    assert health["status"] == "ok" and health["version"]
    assert {"mathverify", "detection", "ocr", "text_overlap"} <= set(health["verifiers"])
    assert health["workers"] == 1
    assert set(health["load"]) >= {"queued_requests", "queued_completions", "scoring_completions"}
