"""demo/sglang_inference.py on CPU: argument building, draft-folder checks, metrics, the engine loop on a
fake engine, and the CLI's dry run / missing-SGLang exits. SGLang itself needs a CUDA GPU and is not
installed here; the real engine path is the only part left untested."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, draft_modeling, subprocess_env

DEMO = REPO / "demo" / "sglang_inference.py"


def _load_demo():
    spec = importlib.util.spec_from_file_location("sglang_inference_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def serving_folder(path: Path, arch: str) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama", "hidden_size": 64}))
    return str(path)


def run_demo(args: list[str]) -> subprocess.CompletedProcess:
    env = subprocess_env(HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(DEMO), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------- tree flags


def test_tree_flags_all_or_none():
    assert demo.tree_args(None, None, None) == {}
    assert demo.tree_args(3, 4, 8) == {"speculative_num_steps": 3, "speculative_eagle_topk": 4,
                                       "speculative_num_draft_tokens": 8}
    with pytest.raises(demo.DemoError, match="--eagle_topk, --num_draft_tokens"):
        demo.tree_args(3, None, None)


@pytest.mark.parametrize("steps,topk,tokens,message", [
    (3, 1, 5, "num_steps \\+ 1 = 4"),      # a chain of depth 3 verifies exactly 4 tokens
    (2, 2, 8, "outside 2..7"),             # 1 + 2 + 1*4 = 7 is the most a depth-2, top-2 tree can hold
    (0, 1, 1, "positive integer"),
    (3, True, 4, "positive integer"),
])
def test_tree_flags_refuse_impossible_trees(steps, topk, tokens, message):
    with pytest.raises(demo.DemoError, match=message):
        demo.tree_args(steps, topk, tokens)


def test_tree_flags_accept_the_largest_tree():
    assert demo.tree_args(2, 2, 7)["speculative_num_draft_tokens"] == 7
    assert demo.tree_args(5, 1, 6)["speculative_num_steps"] == 5


# ---------------------------------------------------------------- draft folders


@pytest.mark.parametrize("arch,algo", [("LlamaForCausalLMEagle3", "EAGLE3"), ("LlamaForCausalLMEagle", "EAGLE"),
                                       ("Qwen2ForCausalLMEagle", "EAGLE")])
def test_serving_folder_algorithm_from_architectures(tmp_path, arch, algo):
    folder = serving_folder(tmp_path / "serve", arch)
    assert demo.draft_algorithm(folder, None) == algo
    assert demo.draft_algorithm(folder, algo.lower()) == algo  # case-insensitive flag


def test_algorithm_flag_must_match_the_folder(tmp_path):
    folder = serving_folder(tmp_path / "serve", "LlamaForCausalLMEagle3")
    with pytest.raises(demo.DemoError, match="EAGLE does not match.*EAGLE3 draft"):
        demo.draft_algorithm(folder, "EAGLE")
    with pytest.raises(demo.DemoError, match="must be one of EAGLE, EAGLE3"):
        demo.draft_algorithm(folder, "MEDUSA")


def test_non_draft_folders_are_refused(tmp_path):
    with pytest.raises(demo.DemoError, match="LlamaForCausalLMEagle3"):
        demo.draft_algorithm(serving_folder(tmp_path / "plain", "LlamaForCausalLM"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(demo.DemoError, match="no config.json"):
        demo.draft_algorithm(str(tmp_path / "empty"), None)
    with pytest.raises(demo.DemoError, match="not a folder"):
        demo.draft_algorithm(str(tmp_path / "missing"), "EAGLE3")
    with pytest.raises(demo.DemoError, match="Hub id together with --speculative_algorithm"):
        demo.draft_algorithm("someone/eagle3-draft", None)
    assert demo.draft_algorithm("someone/eagle3-draft", "eagle3") == "EAGLE3"


@pytest.fixture(scope="module")
def our_draft(llama_base, tmp_path_factory):
    """A real specforge_het training-format draft folder (untrained EagleV3, width 48)."""
    from specforge_het.algorithms.build import build_draft
    from specforge_het.algorithms.io import save_draft

    folder = tmp_path_factory.mktemp("our_draft") / "draft"
    save_draft(build_draft(draft_modeling(), llama_base), folder)
    return str(folder)


def test_our_draft_folder_must_be_exported_first(our_draft):
    with pytest.raises(demo.DemoError) as err:
        demo.draft_algorithm(our_draft, None)
    text = str(err.value)
    assert "not an SGLang serving folder" in text
    assert f"python -m specforge_het.export {our_draft} OUT --format sglang-eagle3" in text


def test_a_folder_from_our_exporter_is_recognised(llama_base, tmp_path):
    """The exporter's sglang-eagle3 output (Llama draft layer, 3 feature layers) is what the demo accepts."""
    from specforge_het.algorithms.build import build_draft
    from specforge_het.export import export_draft

    draft = build_draft(draft_modeling(family="llama", feature_layers=[1, 2, 3]), llama_base)
    out = str(export_draft(draft, tmp_path / "serve", "sglang-eagle3"))
    assert demo.draft_algorithm(out, None) == "EAGLE3"
    assert demo.speculative_args(out)["speculative_draft_model_path"] == out


def test_speculative_args(tmp_path):
    folder = serving_folder(tmp_path / "serve", "LlamaForCausalLMEagle3")
    assert demo.speculative_args(None) == {}
    assert demo.speculative_args(folder, None, 3, 1, 4) == {
        "speculative_algorithm": "EAGLE3", "speculative_draft_model_path": folder, "speculative_num_steps": 3,
        "speculative_eagle_topk": 1, "speculative_num_draft_tokens": 4}
    with pytest.raises(demo.DemoError, match="need --draft_model"):
        demo.speculative_args(None, None, 3, 1, 4)
    with pytest.raises(demo.DemoError, match="need --draft_model"):
        demo.speculative_args(None, "EAGLE3")


# ---------------------------------------------------------------- engine kwargs and server command


def test_engine_kwargs_and_server_flags(tmp_path):
    spec = demo.speculative_args(serving_folder(tmp_path / "serve", "LlamaForCausalLMEagle"), None, 2, 2, 5)
    kwargs = demo.engine_kwargs("/models/base", spec, "bfloat16", disable_cuda_graph=True, seed=7,
                                extra={"mem_fraction_static": 0.7, "enable_torch_compile": True, "chunked_prefill_size": None})
    assert kwargs["model_path"] == "/models/base" and kwargs["dtype"] == "bfloat16" and kwargs["random_seed"] == 7
    assert kwargs["speculative_algorithm"] == "EAGLE" and kwargs["speculative_num_draft_tokens"] == 5
    assert kwargs["disable_decode_cuda_graph"] and kwargs["disable_prefill_cuda_graph"]
    cmd = demo.server_command(kwargs, host="0.0.0.0", port=31000, python="python3")
    assert cmd[:3] == ["python3", "-m", "sglang.launch_server"]
    flags = cmd[3:]
    pairs = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if not flags[i + 1].startswith("--")}
    assert pairs["--model-path"] == "/models/base"
    assert pairs["--speculative-algorithm"] == "EAGLE"
    assert pairs["--speculative-draft-model-path"] == str(tmp_path / "serve")
    assert (pairs["--speculative-num-steps"], pairs["--speculative-eagle-topk"], pairs["--speculative-num-draft-tokens"]) == ("2", "2", "5")
    assert pairs["--mem-fraction-static"] == "0.7" and pairs["--port"] == "31000" and pairs["--host"] == "0.0.0.0"
    assert "--enable-torch-compile" in flags and "--disable-decode-cuda-graph" in flags
    assert "--chunked-prefill-size" not in flags  # None -> left to SGLang


def test_base_only_kwargs_have_no_speculative_fields():
    kwargs = demo.engine_kwargs("m", {}, "auto")
    assert not [k for k in kwargs if k.startswith("speculative")]
    assert "disable_decode_cuda_graph" not in kwargs


def test_typos_of_our_flags_are_not_passed_to_sglang():
    with pytest.raises(demo.DemoError, match="Did you mean --num_steps"):
        demo.check_extra({"num_step": 3}, demo.ENGINE_FLAGS)
    demo.check_extra({"mem_fraction_static": 0.8}, demo.ENGINE_FLAGS)  # a real SGLang field goes through
    with pytest.raises(demo.DemoError, match="--dtype must be one of"):
        demo.check_dtype("fp8")


def test_bench_command_points_at_the_shipped_mtbench():
    cmd = demo.bench_command("127.0.0.1", 30001, num_questions=10)
    assert cmd[1] == "benchmark/mtbench/bench_sglang_eagle.py"
    assert Path(cmd[cmd.index("--question-file") + 1]).is_file()
    assert cmd[cmd.index("--port") + 1] == "30001" and cmd[cmd.index("--num-questions") + 1] == "10"


# ---------------------------------------------------------------- questions and metrics


def test_mtbench_shorthand_loads_both_turns():
    questions = demo.load_questions("mtbench:3")
    assert len(questions) == 3 and all(len(q.turns) == 2 for q in questions)
    assert len(demo.load_questions("mtbench")) > 3
    with pytest.raises(demo.DemoError, match="not found"):
        demo.load_questions("nope.jsonl:2")


def test_request_metrics_from_sglang_meta_info():
    # the shape SGLang 0.5.23 returns for a speculative request (tokenizer_manager meta_info)
    meta = {"id": "x", "finish_reason": {"type": "length", "length": 256}, "prompt_tokens": 37,
            "spec_verify_ct": 101, "completion_tokens": 256, "cached_tokens": 0}
    m = demo.request_metrics(meta)
    assert m["completion_tokens"] == 256 and m["spec_verify_ct"] == 101
    assert m["accept_length"] == pytest.approx(256 / 101)
    assert demo.request_metrics({"completion_tokens": 9})["accept_length"] is None
    with pytest.raises(demo.DemoError, match="completion_tokens"):
        demo.request_metrics({"prompt_tokens": 3})


def _answer(tokens: int, verify: int | None = None) -> dict:
    meta = {"completion_tokens": tokens} if verify is None else {"completion_tokens": tokens, "spec_verify_ct": verify}
    return {"text": "x", "meta_info": meta}


def test_summary_pools_tokens_over_verify_steps():
    """SGLang answers become the harness's records; its summary pools tokens over verify steps."""
    records = [demo.request_record("s", "q1", 0, 5, _answer(30, 10), 1.5, speculative=True),
               demo.request_record("s", "q2", 0, 5, _answer(10, 10), 0.5, speculative=True)]
    s = demo.summarise(records)["s"]
    assert s["tau"] == pytest.approx(40 / 20)  # pooled, not the mean of 3.0 and 1.0
    assert s["tokens_per_s"] == pytest.approx(20.0) and sum(r.steps for r in records) == 20
    base = demo.summarise([demo.request_record("b", "q1", 0, 5, _answer(8), 4.0, speculative=False)])["b"]
    assert base["tau"] == 1.0 and base["tokens_per_s"] == pytest.approx(2.0)
    none = demo.request_record("s", "q1", 0, 5, _answer(8), 4.0, speculative=True)
    assert demo.summarise([none])["s"]["tau"] is None  # speculative, but SGLang reported no verify step


# ---------------------------------------------------------------- engine loop on a fake engine


class FakeEngine:
    """Answers each request with a reply naming its prompt length; 3 tokens per verify step."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def generate(self, input_ids, sampling_params):
        self.calls.append([self.tokenizer.decode(ids) for ids in input_ids])
        outs = []
        for ids in input_ids:
            text = f"answer to {len(ids)} tokens"
            outs.append({"text": text, "meta_info": {"completion_tokens": 6, "spec_verify_ct": 2,
                                                     "finish_reason": {"type": "stop"}}})
        return outs


def test_second_turn_follows_the_models_own_answer(tok_a):
    questions = demo.load_questions("mtbench:2")
    engine = FakeEngine(tok_a)
    records = demo.run_engine(engine, tok_a, questions, {"max_new_tokens": 8}, batch_size=1)
    assert len(records) == 4 and all(r.seconds >= 0 for r in records)
    assert [(r.conversation, r.turn) for r in records] == [(questions[0].id, 0), (questions[0].id, 1),
                                                           (questions[1].id, 0), (questions[1].id, 1)]
    first, second = engine.calls[0][0], engine.calls[1][0]
    assert questions[0].turns[0] in first and questions[0].turns[1] not in first
    assert records[0].text in second and questions[0].turns[1] in second  # turn 2 sees answer 1
    assert all(r.tau == pytest.approx(3.0) for r in records)
    assert records[1].prompt_tokens > records[0].prompt_tokens


def test_batching_changes_calls_not_records(tok_a):
    questions = demo.load_questions("mtbench:3")
    one, all_at_once = FakeEngine(tok_a), FakeEngine(tok_a)
    rec1 = demo.run_engine(one, tok_a, questions, {}, batch_size=1)
    rec0 = demo.run_engine(all_at_once, tok_a, questions, {}, batch_size=0)
    assert len(one.calls) == 6 and len(all_at_once.calls) == 2 and len(all_at_once.calls[0]) == 3

    def figures(recs):  # everything but the timing
        return sorted((r.key, r.prompt_tokens, r.new_tokens, r.steps, r.text) for r in recs)

    assert figures(rec1) == figures(rec0)


def test_prompt_uses_the_chat_template_once(tok_a):
    ids = demo.chat_input_ids(tok_a, [{"role": "user", "content": "Hi there"}], system_prompt="Be brief.")
    text = tok_a.decode(ids)
    assert "Hi there" in text and "Be brief." in text
    bos = tok_a.bos_token_id
    assert bos is None or ids.count(bos) <= 1


# ---------------------------------------------------------------- the CLI


def test_cli_engine_dry_run_prints_kwargs_without_sglang(tmp_path):
    folder = serving_folder(tmp_path / "serve", "LlamaForCausalLMEagle3")
    res = run_demo(["engine_mode", "/models/base", "--draft_model", folder, "--num_steps", "3", "--eagle_topk", "1",
                    "--num_draft_tokens", "4", "--mtbench", "mtbench:2", "--disable_cuda_graph", "--dry_run"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["engine_kwargs"]["speculative_algorithm"] == "EAGLE3"
    assert out["engine_kwargs"]["speculative_draft_model_path"] == folder
    assert out["engine_kwargs"]["speculative_num_draft_tokens"] == 4
    assert out["questions"] == 2 and out["turns"] == 4


def test_cli_server_dry_run_prints_the_command(tmp_path):
    folder = serving_folder(tmp_path / "serve", "LlamaForCausalLMEagle")
    res = run_demo(["server_mode", "/models/base", "--draft_model", folder, "--port", "30123",
                    "--mem_fraction_static", "0.6", "--dry_run"])
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout.strip().splitlines()[0])
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    assert cmd[cmd.index("--speculative-algorithm") + 1] == "EAGLE"
    assert cmd[cmd.index("--port") + 1] == "30123" and cmd[cmd.index("--mem-fraction-static") + 1] == "0.6"
    assert "bench_sglang_eagle.py" in res.stderr


def test_cli_bad_input_fails_cleanly(our_draft):
    res = run_demo(["engine_mode", "/models/base", "--draft_model", our_draft, "--dry_run"])
    assert res.returncode != 0
    assert "--format sglang-eagle3" in res.stderr and "Traceback" not in res.stderr
    res = run_demo(["engine_mode", "/models/base", "--num_steps", "3", "--dry_run"])
    assert res.returncode != 0 and "all-or-none" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("verb", ["engine_mode", "server_mode"])
def test_cli_without_sglang_or_gpu_says_how_to_install(verb, tmp_path):
    import torch

    if importlib.util.find_spec("sglang") is not None and torch.cuda.is_available():
        pytest.skip("SGLang and a GPU are present: this test checks the refusal when one is missing")
    folder = serving_folder(tmp_path / "serve", "LlamaForCausalLMEagle3")
    res = run_demo([verb, "/models/base", "--draft_model", folder, "--mtbench", "mtbench:1"])
    assert res.returncode != 0
    assert "pip install 'specforge_het[sglang]'" in res.stderr
    assert "Traceback" not in res.stderr and "launch_server" not in res.stdout
