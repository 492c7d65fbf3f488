"""The supervised baselines (--baseline sft / raft / refine_ft / critique_ft): what each trains on, the
token-mean NLL by hand, an empty step, and two-step runs on a tiny random model."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import critique
import evaluate
import loss as L
import rollout
import train
from support import batching, cli, models
from test_critique import _Handler, server  # noqa: F401  (a local OpenAI-compatible endpoint as the CoT critic)
from test_train import run


def test_supervised_targets_pick_exactly_what_each_baseline_trains(tok):
    rows = [{"question": "q0", "answer": "1", "solution": "s0"}, {"question": "q1", "answer": "2", "solution": "s1"}]
    prompts = [[100], [101]]                          # the BARE question prompts
    responses = [[1], [2], [3], [4]]                  # n = 2 per question: 0, 1 -> q0; 2, 3 -> q1
    rewards = [0.0, 1.0, 0.0, 0.0]
    to_refine = [0, 2, 3]                             # refined: a wrong one of q0, both wrong ones of q1
    refinements, refine_rewards = [[7], [8], [9]], [1.0, 0.0, 1.0]
    kw = dict(tok=tok, rows=rows, prompt_ids=prompts, n_sampled=2, responses=responses, rewards=rewards,
              to_refine=to_refine, refinements=refinements, refine_rewards=refine_rewards, R=8, critique_R=8)
    crits = ["... Conclusion: wrong", "looks fine", "Conclusion: wrong."]
    ids = lambda text, R=8: rollout.policy_tokens(tok, text, R)
    def targets(baseline):  # (group, prompt, response) of each Sequence record
        return [(s.group, s.prompt, s.response) for s in train.supervised_targets(baseline, critiques=crits, **kw)]
    assert targets("sft") == [(0, [100], ids("s0")), (1, [101], ids("s1"))]
    assert ids("s0")[-1] == tok.eos_token_id
    assert targets("raft") == [(0, [100], [2])]                              # the one correct sample
    assert targets("refine_ft") == [(0, [100], [7]), (1, [101], [9])]
    out = targets("critique_ft")  # the critic found the error in 0 and 2
    assert [(g, resp) for g, _, resp in out] == [(0, ids(crits[0])), (1, ids(crits[2]))]
    msgs = critique.critic_messages("q0", tok.decode([1], skip_special_tokens=True), "s0")
    assert out[0][1] == rollout.chat_ids(tok, msgs[-1]["content"], system=msgs[0]["content"])  # the critique prompt


def test_token_mean_nll_by_hand(tiny_model_dir):
    """The loss a baseline minimises: -log p averaged over the real response tokens of the whole
    mini-batch; prompt tokens and padding add nothing, whatever the padding holds."""
    model, _ = models.load_model_and_tokenizer(tiny_model_dir, dtype="float32")
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11, 12], [13]]
    batch = batching.pack(prompts, responses, pad_id=0)
    logp, _ = rollout.response_logprobs(model, batch, entropy=False)                    # (2, 3)
    mask = batch["response_mask"]
    nll = L.aggregate(-logp, mask, int(mask.sum()))
    by_hand = []
    for p, r in zip(prompts, responses):
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0]                               # (P + R, V)
        lp = torch.log_softmax(logits.float(), -1)
        by_hand += [-lp[len(p) - 1 + t, r[t]].item() for t in range(len(r))]
    assert nll.item() == pytest.approx(sum(by_hand) / 4, rel=1e-5)                     # 4 real tokens, not 6
    batch["response_ids"][1, 1:] = 77                                                    # other padding
    logp2, _ = rollout.response_logprobs(model, batch, entropy=False)
    assert L.aggregate(-logp2, mask, 4).item() == pytest.approx(nll.item(), rel=1e-6)


def answered_by_tiny_model(tmp_path, tiny_model_dir, tiny_data, field, *flags):
    """The tiny random model never answers our questions; so run one step, read what its `field` (response
    or refinement) answered, and write data whose answers are those: the same seed and flags sample the same
    texts, now correct. (Critiques that name the answer would change the refinements: use ones that do not.)"""
    out, _ = run(tmp_path, tiny_model_dir, tiny_data, "probe", "--max_steps", "1", *flags)
    answers = {}
    for s in map(json.loads, open(out / "samples.jsonl")):
        if s.get(field) and (a := evaluate.extract_answer(s[field])) is not None:
            answers.setdefault(s["question"], a)
    assert answers, f"no {field} of the tiny model had an extractable answer"
    rows = [json.loads(x) for x in open(tiny_data[0])]
    for r in rows:
        r["answer"] = answers.get(r["question"], r["answer"])
    path = tmp_path / "train_answered.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), tiny_data[1]


@pytest.mark.parametrize("baseline", ["sft", "raft", "refine_ft", "critique_ft"])
def test_two_step_runs_change_the_adapter(tmp_path, tiny_model_dir, tiny_data, baseline, server):
    # critique_ft: a tiny random critic never finds the error, so the critic is an endpoint that does
    _Handler.script = ["Step 1 adds instead of multiplying. Conclusion: wrong [END]"] * 100
    flags = ["--baseline", baseline, "--refine_scope", "all"] + {
        "refine_ft": ["--critique_type", "indicative"],
        "critique_ft": ["--critique_type", "cot", "--critic_base_url", server, "--critic_tries", "1"]}.get(baseline, [])
    data = tiny_data
    if baseline in ("raft", "refine_ft"):  # they need a correct sample / a refinement that fixes a wrong answer
        flags.append("--score_unfinished")  # the tiny model's answers run to the cap: score their text
        data = answered_by_tiny_model(tmp_path, tiny_model_dir, tiny_data,
                                      "response" if baseline == "raft" else "refinement", *flags)
    out, metrics = run(tmp_path, tiny_model_dir, data, baseline, "--max_steps", "2", *flags)
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    trained = sum(m["baseline/examples"] for m in steps)
    lora_b = [v for k, v in load_file(out / "checkpoint-2" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert trained > 0 and any(v.abs().sum() > 0 for v in lora_b)  # something was trained, and it moved the adapter
    if baseline == "sft":
        assert [m["baseline/examples"] for m in steps] == [2, 2]   # one reference solution per question
    if baseline == "critique_ft":  # every wrong answer got a critique; the endpoint's token counts are logged
        assert all(m["critic/calls"] == m["baseline/examples"] > 0 for m in steps)
        assert all(m["critic/tokens_in"] == 11 * m["critic/calls"] for m in steps)


def test_an_empty_step_does_not_move_the_weights(tmp_path, tiny_model_dir, tiny_data):
    """raft with no correct sample (the tiny model never answers right): logged, no optimizer step."""
    out, metrics = run(tmp_path, tiny_model_dir, tiny_data, "empty", "--max_steps", "1", "--baseline", "raft")
    step = next(m for m in metrics if "loss" in m)
    assert step["baseline/examples"] == 0 and step["skipped_steps"] == 1
    # no update, so nothing to average: nan, not a 0 that would pull a run's means down
    assert all(math.isnan(step[k]) for k in ("loss", "grad_norm", "train/entropy", "train/clip_frac"))
    lora_b = [v for k, v in load_file(out / "checkpoint-1" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() == 0 for v in lora_b)       # B starts at zero and stayed there
    state = torch.load(out / "checkpoint-1" / "trainer_state.pt", weights_only=False)
    assert not state["optimizer"]["state"]                          # AdamW never stepped


def test_baseline_flags_are_checked():
    with pytest.raises(SystemExit, match="critique_ft.*--critique_type cot"):
        cli.validate(cli.parse_config(train.Config, ["--baseline", "critique_ft"]))
    with pytest.raises(SystemExit, match="refine_ft"):
        cli.validate(cli.parse_config(train.Config, ["--baseline", "refine_ft", "--critique_type", "none"]))
    assert critique.reference_or_answer(None, "7") == "The final answer is \\boxed{7}."


def test_an_answer_cut_at_the_cap_scores_zero_unless_score_unfinished(tmp_path, tiny_model_dir, tiny_data):
    """Step 2 end to end: on data whose answers are what the tiny model writes (its answers run to the
    cap), the same seed samples the same texts with and without --score_unfinished; with it they score
    on their text, without it (the default) the cut ones score 0."""
    grpo = ["--critique_type", "none"]
    data = answered_by_tiny_model(tmp_path, tiny_model_dir, tiny_data, "response", *grpo, "--score_unfinished")
    samples = {}
    for name, extra in (("scored", ["--score_unfinished"]), ("cut", [])):
        out, _ = run(tmp_path, tiny_model_dir, data, name, "--max_steps", "1", *grpo, *extra)
        samples[name] = [json.loads(x) for x in open(out / "samples.jsonl")]
    assert [s["response"] for s in samples["scored"]] == [s["response"] for s in samples["cut"]]
    scored, cut = ([s["reward"] for s in samples[k]] for k in ("scored", "cut"))
    assert any(scored) and all(c <= s for c, s in zip(cut, scored)) and cut != scored
    # exactly the answers cut at the cap lose their reward (samples.jsonl says which ended)
    ended = [s["ended"] for s in samples["cut"]]
    assert not all(ended) and all(c == (s if e else 0.0) for c, s, e in zip(cut, scored, ended))
