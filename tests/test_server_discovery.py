"""Finding reward servers: the release's `.reward_server/<JOB_ID>/<host>:<port>` files, URL lists, the run options."""

from __future__ import annotations

import logging

import pytest

from triune_trl.configs import TriuneScriptArguments
from triune_trl.rewards import RewardRouter
from triune_trl.runs.train import build_reward_router
from triune_trl.server.client import RemoteRewardRouter, RewardServerError
from triune_trl.server.discovery import (
    RewardServerDiscoveryError,
    discover_urls,
    parse_server_urls,
    reachable_host,
    register_server,
    unregister_server,
)

from .server_helpers import running_server


def test_a_registered_server_is_discovered_and_unregistering_removes_it(tmp_path):
    path = register_server("j-alpha", "127.0.0.1", 8192, tmp_path)
    assert path == tmp_path / "j-alpha" / "127.0.0.1:8192"
    assert path.is_file() and path.stat().st_size == 0  # the release's format: an empty file named ip:port
    assert discover_urls("j-alpha", tmp_path) == ["http://127.0.0.1:8192"]
    unregister_server(path)
    assert not (tmp_path / "j-alpha").exists()
    unregister_server(path)  # twice is harmless (a server stopping after someone cleaned up)


def test_folders_written_by_the_release_launch_script_are_read(tmp_path):
    """`REMOTE_REWARD_JOB_ID="j-a|j-b"`: every file of every job, in job order; a job may hold several servers."""
    for job, names in {"j-a": ["10.0.0.5:8192"], "j-b": ["10.0.0.7:8192", "10.0.0.6:8193"]}.items():
        (tmp_path / job).mkdir()
        for name in names:
            (tmp_path / job / name).touch()
    assert discover_urls("j-a|j-b", tmp_path) == [
        "http://10.0.0.5:8192",
        "http://10.0.0.6:8193",
        "http://10.0.0.7:8192",
    ]
    assert discover_urls(["j-b", "j-a", "j-b"], tmp_path)[-1] == "http://10.0.0.5:8192"


def test_a_wildcard_host_registers_the_machines_reachable_address(tmp_path):
    path = register_server("j-any", "0.0.0.0", 9000, tmp_path)
    host = reachable_host()
    assert host != "0.0.0.0" and path.name == f"{host}:9000"
    assert discover_urls("j-any", tmp_path) == [f"http://{host}:9000"]


def test_ipv6_hosts_are_bracketed_in_file_names_and_urls(tmp_path):
    path = register_server("j-v6", "::1", 8192, tmp_path)
    assert path.name == "[::1]:8192"
    assert discover_urls("j-v6", tmp_path) == ["http://[::1]:8192"]


def test_missing_or_empty_job_folders_are_errors_that_say_where_and_what_to_do(tmp_path):
    with pytest.raises(RewardServerDiscoveryError) as missing:
        discover_urls("j-nowhere", tmp_path)
    message = str(missing.value)
    assert "j-nowhere" in message and str(tmp_path) in message and "does not exist" in message
    assert "triune serve-rewards" in message and "--job-id j-nowhere" in message
    (tmp_path / "j-empty").mkdir()
    with pytest.raises(RewardServerDiscoveryError, match="j-empty.*holds no host:port file"):
        discover_urls("j-empty", tmp_path)
    with pytest.raises(RewardServerDiscoveryError, match="empty"):
        discover_urls(" | ", tmp_path)


def test_files_that_are_not_host_port_are_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "j-mixed"
    folder.mkdir()
    for name in ("notes.txt", "host:notaport", "10.0.0.5:99999", "10.0.0.5:8192"):
        (folder / name).touch()
    (folder / "10.0.0.9:8192").mkdir()  # a folder is not a registration
    with caplog.at_level(logging.WARNING, logger="triune_trl.server.discovery"):
        assert discover_urls("j-mixed", tmp_path) == ["http://10.0.0.5:8192"]
    skipped = {record.getMessage().split(" ")[4] for record in caplog.records}
    assert {str(folder / name) for name in ("notes.txt", "host:notaport", "10.0.0.5:99999", "10.0.0.9:8192")} == skipped


@pytest.mark.parametrize("job_id", ["../escape", "a/b", "..", "", "a|b"])
def test_job_ids_must_be_plain_folder_names(tmp_path, job_id):
    with pytest.raises(RewardServerDiscoveryError, match="job id"):
        register_server(job_id, "127.0.0.1", 8192, tmp_path)
    assert not any(tmp_path.iterdir()) and not (tmp_path.parent / "escape").exists()


def test_server_url_lists_are_split_normalised_and_checked():
    assert parse_server_urls("http://a:1| http://b:2/ ,http://a:1") == ["http://a:1", "http://b:2"]
    assert parse_server_urls(["10.0.0.5:8192", "https://rewards.example/v-triune/"]) == [
        "http://10.0.0.5:8192",
        "https://rewards.example/v-triune",
    ]
    for bad, match in (("ftp://a:1", "http"), ("http://a:1/?x=1", "http"), ("10.0.0.5", "give the port"),
                       ("http://a:notaport", "notaport"), ("", "empty"), ("|", "empty")):  # fmt: skip
        with pytest.raises(RewardServerDiscoveryError, match=match):
            parse_server_urls(bad)


# ------------------------------------------------------------------------------------------------ the run options


def test_run_options_are_validated_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("REMOTE_REWARD_JOB_ID", raising=False)
    with pytest.raises(ValueError, match="expected http"):
        TriuneScriptArguments(reward_server_urls="ftp://x:1")
    with pytest.raises(ValueError, match="job id"):
        TriuneScriptArguments(reward_server_job_ids="j-a|../b")
    with pytest.raises(ValueError, match="--reward_server_token_file is set but no reward server"):
        TriuneScriptArguments(reward_server_token_file=str(tmp_path / "token"))
    for name, value in (("reward_server_batch_size", 0), ("reward_server_max_in_flight", 0),
                        ("reward_server_retries", 0), ("reward_server_timeout", 0.0),
                        ("reward_server_grace_period", -1.0)):  # fmt: skip
        with pytest.raises(ValueError, match=f"--{name}"):
            TriuneScriptArguments(reward_server_urls="http://127.0.0.1:8192", **{name: value})
    assert not TriuneScriptArguments().uses_reward_servers


def test_the_releases_job_id_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("REMOTE_REWARD_JOB_ID", "j-a|j-b")
    assert TriuneScriptArguments().reward_server_job_ids == "j-a|j-b"
    assert TriuneScriptArguments(reward_server_job_ids="j-c").reward_server_job_ids == "j-c"


def test_the_run_builds_a_remote_router_from_urls_and_job_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("REMOTE_REWARD_JOB_ID", raising=False)
    assert type(build_reward_router(TriuneScriptArguments(reward_workers=0))) is RewardRouter
    register_server("j-a", "127.0.0.1", 9001, tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    args = TriuneScriptArguments(
        reward_server_urls="http://127.0.0.1:9000", reward_server_job_ids="j-a", reward_server_dir=str(tmp_path),
        reward_server_token_file=str(token), reward_server_batch_size=16, reward_server_max_in_flight=3,
        reward_server_timeout=7.0, reward_server_retries=2, reward_server_grace_period=30.0, iou_threshold="0.75",
    )  # fmt: skip
    router = build_reward_router(args)
    assert isinstance(router, RemoteRewardRouter) and router.__name__ == "triune"
    assert router.urls == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    settings = (router.token, router.batch_size, router.max_in_flight, router.timeout, router.retries)
    assert settings == ("s3cret", 16, 3, 7.0, 2)
    assert (router.grace_period, router.iou_threshold) == (30.0, 0.75)
    with pytest.raises(RewardServerDiscoveryError, match="j-missing"):
        build_reward_router(TriuneScriptArguments(reward_server_job_ids="j-missing", reward_server_dir=str(tmp_path)))
    token.write_text("  \n")
    with pytest.raises(RewardServerError, match=f"--reward_server_token_file {token}: expected one word"):
        build_reward_router(args)


def test_serve_rewards_registers_while_it_runs_and_unregisters_when_stopped(tmp_path):
    extra = ["--job-id", "j-live", "--discovery-dir", str(tmp_path)]
    with running_server(workers=0, extra_args=extra) as server:
        [url] = discover_urls("j-live", tmp_path)
        assert url == server.url
        router = RemoteRewardRouter(discover_urls("j-live", tmp_path))
        spec = {"ground_truth": "<ok>", "verifier": "tag", "accuracy_ratio": 1.0, "format_ratio": 0.0}
        [scores] = router.score_items([{"completion": "<ok>", "reward_model": spec}])
        assert scores["accuracy_reward"] == 1.0
    assert not (tmp_path / "j-live").exists()
