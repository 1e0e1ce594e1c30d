"""`hf:DIR` teachers: tiny GPT-2s saved with save_pretrained, loaded through the
loader and compared with the same directory run directly through transformers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from hf_fixtures import edit_config, fake_model, save_model
from text_fixtures import save_tokenizer

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from transferset.errors import UserError  # noqa: E402
from transferset.teachers import Teacher, TeacherSpec, fingerprint, load_teacher, run_teachers  # noqa: E402
from transferset.teachers.huggingface import check_shared_vocabulary  # noqa: E402
from transferset.text.tokenizer import load_tokenizer  # noqa: E402

CPU = torch.device("cpu")
OTHER_SENTENCES = ["a completely different corpus .", "with its own merges and tokens .", "so ids mean other things ."]


def direct(directory, task="causal"):
    """The model as transformers alone loads it: the reference the teacher must match."""
    auto = transformers.AutoModelForCausalLM if task == "causal" else transformers.AutoModelForSequenceClassification
    return auto.from_pretrained(directory, local_files_only=True, dtype=torch.float32).eval()


def copy_of(directory, tmp_path, name="copy"):
    return shutil.copytree(directory, tmp_path / name)


def refusal(spec, trust=False):
    with pytest.raises(UserError) as caught:
        load_teacher(TeacherSpec(spec), CPU, trust_checkpoint=trust)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"lm": save_model(root / "lm"), "lm_b": save_model(root / "lm_b", seed=1),
            "classifier": save_model(root / "classifier", classes=3),
            "other_vocab": save_model(root / "other_vocab", sentences=OTHER_SENTENCES, tokenizer_size=280)}


@pytest.fixture(scope="module")
def batch(models):
    """Three rows of real token ids, right-padded with the pad id, and their lengths."""
    tokenizer = load_tokenizer(models["lm"])
    encoded = [e.ids for e in tokenizer.encode(["the film is a charming journey .", "too long .", "one of the year 's best films ."])]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tokenizer.pad_id, dtype=torch.int32)
    mask = torch.zeros((len(encoded), width), dtype=torch.int64)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask, [len(tokens) for tokens in encoded]


def test_causal_lm_logits_are_the_models_own(models, batch):
    ids, mask, _ = batch
    teachers = [load_teacher(TeacherSpec(f"hf:{models[name]}"), CPU) for name in ("lm", "lm_b")]
    logits = run_teachers(teachers, {"input_ids": ids, "attention_mask": mask}, "fp32")
    assert logits.shape == (2, *ids.shape, 300)
    with torch.inference_mode():
        for member, name in zip(logits, ("lm", "lm_b")):
            assert torch.equal(member, direct(models[name])(input_ids=ids.long(), attention_mask=mask).logits)
    assert not torch.equal(logits[0], logits[1])  # two different seeds, two different teachers
    assert [t.format for t in teachers] == ["hf", "hf"] and teachers[0].name == "lm"


def test_right_padding_leaves_the_real_positions_as_the_unpadded_rows(models, batch):
    ids, mask, lengths = batch
    teacher = load_teacher(TeacherSpec(f"hf:{models['lm']}"), CPU)
    padded = run_teachers([teacher], {"input_ids": ids, "attention_mask": mask}, "fp32")[0]
    for row, length in enumerate(lengths):
        alone = run_teachers([teacher], {"input_ids": ids[row:row + 1, :length]}, "fp32")[0, 0]  # one input: passed positionally
        torch.testing.assert_close(padded[row, :length], alone, rtol=1e-5, atol=1e-5)
    assert min(lengths) < ids.shape[1]  # the batch really is padded


def test_a_classifier_gives_class_logits_whatever_id_pads_its_rows(models, batch):
    ids, mask, lengths = batch
    teacher = load_teacher(TeacherSpec(str(models["classifier"])), CPU)  # recognised without the hf: prefix
    logits = run_teachers([teacher], {"input_ids": ids.float(), "attention_mask": mask}, "fp32")[0]
    assert logits.shape == (3, 3)
    with torch.inference_mode():
        reference = direct(models["classifier"], "classifier")(input_ids=ids.long(), attention_mask=mask).logits
    assert torch.equal(logits, reference)
    junk_padded = ids.masked_fill(mask == 0, 7)  # padding written with an ordinary token id: the mask decides
    again = run_teachers([teacher], {"input_ids": junk_padded, "attention_mask": mask}, "fp32")[0]
    assert torch.equal(again, logits)
    for row, length in enumerate(lengths):
        alone = run_teachers([teacher], {"input_ids": ids[row:row + 1, :length]}, "fp32")[0, 0]
        torch.testing.assert_close(logits[row], alone, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gives_float32_logits_near_the_fp32_ones(models, batch):
    ids, mask, _ = batch
    teacher = load_teacher(TeacherSpec(f"hf:{models['lm']}"), CPU)
    inputs = {"input_ids": ids, "attention_mask": mask}
    full, half = run_teachers([teacher], inputs, "fp32"), run_teachers([teacher], inputs, "bf16")
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # it really ran in bf16
    torch.testing.assert_close(half, full, rtol=0, atol=0.05)


def test_describe_records_the_vocabulary_only_for_hf_teachers(models):
    teacher = load_teacher(TeacherSpec(f"hf:{models['lm']}"), CPU)
    described = teacher.describe(1.0)
    tokenizer = load_tokenizer(models["lm"])
    assert described["tokenizer_fingerprint"] == tokenizer.fingerprint and described["vocab_size"] == 300
    assert described["architecture"] == "GPT2LMHeadModel"
    plain = Teacher("t", "factory", "abc", torch.nn.Identity(), TeacherSpec("pkg.mod:fn")).describe(1.0)
    assert set(plain) == {"name", "format", "sha256", "weight", "spec", "weights_file"}


def test_fingerprint_follows_config_weights_and_tokenizer_not_the_place(models, tmp_path):
    def of(directory):
        return fingerprint(TeacherSpec(f"hf:{directory}"))

    original = of(models["lm"])
    assert original["kind"] == "hf"
    moved = copy_of(models["lm"], tmp_path, "moved")
    assert of(moved) == original
    assert load_teacher(TeacherSpec(f"hf:{moved}"), CPU).sha256 == load_teacher(TeacherSpec(f"hf:{models['lm']}"), CPU).sha256
    reweighted = copy_of(models["lm"], tmp_path, "reweighted")
    shutil.copy(models["lm_b"] / "model.safetensors", reweighted / "model.safetensors")
    assert of(reweighted)["weights_sha256"] != original["weights_sha256"]
    reconfigured = edit_config(copy_of(models["lm"], tmp_path, "reconfigured"), layer_norm_epsilon=1e-3)
    assert of(reconfigured)["config_sha256"] != original["config_sha256"]
    retokenized = copy_of(models["lm"], tmp_path, "retokenized")
    (retokenized / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<eos>"}))
    changed = of(retokenized)
    assert changed["tokenizer_sha256"] != original["tokenizer_sha256"]
    assert changed["weights_sha256"] == original["weights_sha256"] and changed["config_sha256"] == original["config_sha256"]


def test_sharded_weights_load_and_are_fingerprinted_shard_by_shard(models, tmp_path, batch):
    sharded = save_tokenizer(tmp_path / "sharded")
    shutil.copy(models["lm"] / "config.json", sharded)
    direct(models["lm"]).save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*.safetensors"))) > 1
    ids, mask, _ = batch
    inputs = {"input_ids": ids, "attention_mask": mask}
    whole = run_teachers([load_teacher(TeacherSpec(f"hf:{models['lm']}"), CPU)], inputs, "fp32")
    assert torch.equal(run_teachers([load_teacher(TeacherSpec(f"hf:{sharded}"), CPU)], inputs, "fp32"), whole)
    before = fingerprint(TeacherSpec(f"hf:{sharded}"))["weights_sha256"]
    last = sorted(sharded.glob("model-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-1] + b"\0")
    assert fingerprint(TeacherSpec(f"hf:{sharded}"))["weights_sha256"] != before
    last.unlink()
    assert f"names shard {last.name!r}, which is missing" in refusal(f"hf:{sharded}")


def test_ensemble_members_must_share_one_vocabulary(models):
    same = [load_teacher(TeacherSpec(f"hf:{models[name]}"), CPU) for name in ("lm", "lm_b")]
    check_shared_vocabulary(same)
    other = load_teacher(TeacherSpec(f"hf:{models['other_vocab']}"), CPU)
    with pytest.raises(UserError) as caught:
        check_shared_vocabulary([*same, other])
    message = str(caught.value)
    assert message.startswith("teachers 'lm' and 'other_vocab' use different tokenizers (lm: 300 tokens, fingerprint ")
    assert message.endswith("; every member of an ensemble must share one vocabulary") and "other_vocab: 280 tokens" in message
    check_shared_vocabulary([same[0], Teacher("t", "factory", "abc", torch.nn.Identity(), TeacherSpec("pkg.mod:fn"))])


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused(models, tmp_path):
    short = edit_config(copy_of(models["lm"], tmp_path), vocab_size=280)
    assert "has a vocabulary of 280 (config.json's vocab_size) but its tokenizer has 300 tokens" in refusal(f"hf:{short}")


def test_the_loaded_embeddings_are_checked_against_the_tokenizer_too(models, tmp_path, monkeypatch):
    from transferset.teachers import huggingface

    mixed = copy_of(models["other_vocab"], tmp_path)  # a 280-row model beside a 300-token tokenizer
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(models["lm"] / name, mixed / name)
    monkeypatch.setattr(huggingface, "config_vocab_size", lambda config: None)  # a config keeping it where we do not look
    assert "has a vocabulary of 280 (its input embeddings) but its tokenizer has 300 tokens" in refusal(f"hf:{mixed}")


def test_a_model_padded_past_its_tokenizer_is_kept_whole(models, tmp_path):
    """Qwen2, Pythia and Phi-2 round their embedding matrix up: every model row stays a target column."""
    from transformers import GPT2LMHeadModel

    padded = copy_of(models["lm"], tmp_path)
    model = GPT2LMHeadModel.from_pretrained(padded, local_files_only=True)
    model.resize_token_embeddings(320)
    model.save_pretrained(padded, safe_serialization=True)
    teacher = load_teacher(TeacherSpec(f"hf:{padded}"), torch.device("cpu"))
    ids = torch.tensor([[5, 9, 17, 2]])
    logits = run_teachers([teacher], {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "fp32")
    assert logits.shape == (1, 1, 4, 320)


def test_pickled_weights_need_trust(models, tmp_path, batch):
    pickled = copy_of(models["lm"], tmp_path, "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save(direct(models["lm"]).state_dict(), pickled / "pytorch_model.bin")
    message = refusal(f"hf:{pickled}")
    assert "holds only pytorch_model.bin weights" in message and "pass --trust-checkpoint" in message
    assert "save_pretrained(DIR, safe_serialization=True)" in message
    ids, mask, _ = batch
    inputs = {"input_ids": ids, "attention_mask": mask}
    trusted = load_teacher(TeacherSpec(f"hf:{pickled}"), CPU, trust_checkpoint=True)
    safe = load_teacher(TeacherSpec(f"hf:{models['lm']}"), CPU)
    assert torch.equal(run_teachers([trusted], inputs, "fp32"), run_teachers([safe], inputs, "fp32"))


def test_bad_directories_are_refused_in_one_line(models, tmp_path):
    assert "does not exist; give a local model directory (nothing is downloaded)" in refusal(f"hf:{tmp_path / 'gpt2'}")
    (tmp_path / "config.json").write_text("{}")
    assert "is a file, not a directory; give the directory save_pretrained wrote" in refusal(f"hf:{tmp_path / 'config.json'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json, so it is not a Hugging Face model directory" in refusal(f"hf:{empty}")
    assert "is a directory without config.json, not a model transferset can load; give a Hugging Face model" in refusal(str(empty))
    base = edit_config(copy_of(models["lm"], tmp_path, "base"), architectures=["GPT2Model"])
    assert "is not a causal LM or a sequence classifier (config.json architectures: GPT2Model)" in refusal(f"hf:{base}")
    unnamed = edit_config(copy_of(models["lm"], tmp_path, "unnamed"), architectures=None)
    assert "(config.json architectures: none)" in refusal(f"hf:{unnamed}")
    custom = edit_config(copy_of(models["lm"], tmp_path, "custom"), auto_map={"AutoModelForCausalLM": "modeling.Mine"})
    assert "needs custom code from its directory (config.json has auto_map)" in refusal(f"hf:{custom}")
    untokenized = copy_of(models["lm"], tmp_path, "untokenized")
    (untokenized / "tokenizer.json").unlink()
    assert "has no tokenizer.json, so its vocabulary cannot be checked" in refusal(f"hf:{untokenized}")
    weightless = copy_of(models["lm"], tmp_path, "weightless")
    (weightless / "model.safetensors").unlink()
    assert "holds no weights (model.safetensors)" in refusal(f"hf:{weightless}")
    headless = edit_config(copy_of(models["lm"], tmp_path, "headless"), architectures=["GPT2ForSequenceClassification"])
    assert "has no weights for score.weight in its checkpoint, which would be random" in refusal(f"hf:{headless}")
    unpadded = edit_config(copy_of(models["classifier"], tmp_path, "unpadded"), pad_token_id=None)
    assert "is a sequence classifier without a pad_token_id in config.json" in refusal(f"hf:{unpadded}")
    unknown = edit_config(copy_of(models["lm"], tmp_path, "unknown"), model_type="no-such-model")
    assert "could not be loaded by transformers (" in refusal(f"hf:{unknown}")


def test_loading_touches_no_network_and_prints_nothing(models, monkeypatch, capfd):
    def refuse(*args, **kwargs):
        raise AssertionError("an hf teacher tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    capfd.readouterr()
    load_teacher(TeacherSpec(f"hf:{models['classifier']}"), CPU)
    assert capfd.readouterr() == ("", "")


def test_refusals_before_the_weights_need_no_transformers_import(tmp_path):
    """What `generate` refuses up front must not cost a transformers import (the error catalogue relies on it)."""
    cases = {"auto_map": fake_model(tmp_path / "custom", auto_map={"AutoModelForCausalLM": "modeling.Mine"}),
             "pytorch_model.bin": fake_model(tmp_path / "pickled", weights="pytorch_model.bin"),
             "has a vocabulary of 280": fake_model(tmp_path / "short", vocab_size=280),
             "no tokenizer.json": fake_model(tmp_path / "untokenized")}
    (cases["no tokenizer.json"] / "tokenizer.json").unlink()
    script = (
        "import sys, torch\n"
        "from transferset.errors import UserError\n"
        "from transferset.teachers import TeacherSpec, load_teacher\n"
        f"for expected, folder in {[(k, str(v)) for k, v in cases.items()]!r}:\n"
        "    try:\n"
        "        load_teacher(TeacherSpec('hf:' + folder), torch.device('cpu'))\n"
        "    except UserError as error:\n"
        "        assert expected in str(error), (expected, str(error))\n"
        "    else:\n"
        "        raise AssertionError(folder + ' was loaded')\n"
        "assert 'transformers' not in sys.modules, 'a refusal imported transformers'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_bf16_checkpoint_is_loaded_in_float32(models, tmp_path, batch):
    halved = save_tokenizer(tmp_path / "halved")
    direct(models["lm"]).to(torch.bfloat16).save_pretrained(halved, safe_serialization=True)
    teacher = load_teacher(TeacherSpec(f"hf:{halved}"), CPU)
    assert {p.dtype for p in teacher.module.parameters()} == {torch.float32}
    ids, mask, _ = batch
    reference = direct(models["lm"]).to(torch.bfloat16).float()  # the same rounding of the weights, run in float32
    with torch.inference_mode():
        expected = reference(input_ids=ids.long(), attention_mask=mask).logits
    assert torch.equal(run_teachers([teacher], {"input_ids": ids, "attention_mask": mask}, "fp32")[0], expected)
