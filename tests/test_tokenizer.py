"""The VQ-VAE tokenizer (BEiT / CAE token targets): shapes and id range on the patch grid, the
straight-through gradient, the EMA codebook update and dead-code restarts by hand, the
safetensors + JSON round trip, and ``selfsup tokenizer train`` on real CIFAR-10 images."""

import json

import pytest
import torch

from selfsup.cli import main
from selfsup.core.errors import ConfigError
from selfsup.models.tokenizer import (
    EMAQuantizer,
    TokenizerConfig,
    VQTokenizer,
    codebook_usage,
    load_tokenizer,
    save_tokenizer,
)
from selfsup.train.tokenizer import vq_loss

TINY = {"codebook_size": 16, "code_dim": 8, "hidden": 16, "res_blocks": 1}


def _tiny(**kw) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(TokenizerConfig(**{**TINY, **kw}))


def test_ids_lie_on_the_patch_grid_and_the_gradient_reaches_the_encoder(cifar_images):
    tok = _tiny()
    x = cifar_images[:8]
    tok.quantizer.restart_dead(tok.encode(x).flatten(0, 1).detach())  # codebook from data
    out = tok.autoencode(x)
    assert out.recon.shape == x.shape and out.ids.shape == (8, 64) and out.ids.dtype == torch.int64
    assert int(out.ids.min()) >= 0 and int(out.ids.max()) < 16
    assert torch.equal(tok(x), out.ids)  # the Tokenizer protocol: ids only
    assert tok(x[:, :, :16, :24]).shape == (8, 4 * 6)  # any multiple of the patch size
    assert tok.decode(out.ids, (8, 8)).shape == x.shape
    # straight-through: the decoder saw the codes, the gradient of the reconstruction reaches E
    loss, _ = vq_loss(out, x, commitment=0.0)
    loss.backward()
    first = tok.encoder[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert not tok.quantizer.codebook.requires_grad  # the codebook moves by EMA only
    with pytest.raises(ValueError, match="multiples of its patch size 4"):
        tok(x[:, :, :30])
    with pytest.raises(ConfigError, match="power of two"):
        TokenizerConfig(patch_size=6)


def test_ema_update_and_dead_code_restart_by_hand():
    q = EMAQuantizer(size=3, dim=2, decay=0.5, dead_threshold=1.0, eps=0.0)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
    q.ema_sum.copy_(q.codebook)
    q.ema_count.fill_(1.0)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [1.0, 1.0]])
    ids = q.assign(z)
    assert ids.tolist() == [0, 0, 1, 0]
    q.update(z, ids)
    # N = 0.5 * 1 + 0.5 * (3, 1, 0) = (2, 1, 0.5); m_0 = 0.5 * 0 + 0.5 * (2, 2) = (1, 1)
    torch.testing.assert_close(q.ema_count, torch.tensor([2.0, 1.0, 0.5]))
    torch.testing.assert_close(q.codebook[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(q.codebook[1], torch.tensor([9.5, 9.5]))  # (0.5 * 10 + 0.5 * 9) / 1
    # code 2 (count 0.5 < 1) is dead: it restarts at one of the encoder outputs, with count 1
    gen = torch.Generator().manual_seed(0)
    assert q.restart_dead(z, gen) == 1
    assert any(torch.equal(q.codebook[2], row) for row in z) and q.ema_count[2] == 1.0
    assert q.restart_dead(z, gen) == 0


def test_restarts_bring_an_unused_codebook_back_into_use(cifar_images):
    tok = _tiny()
    z = tok.encode(cifar_images[:32]).flatten(0, 1).detach()
    tok.quantizer.codebook.fill_(100.0)  # far from every output, all codes tied: one code used
    before = codebook_usage(tok.quantizer.assign(z), 16)
    assert before["codes_used"] == 1 / 16 and before["perplexity"] == pytest.approx(1.0)
    assert tok.quantizer.restart_dead(z, torch.Generator().manual_seed(0)) == 16  # counts start at 0
    after = codebook_usage(tok.quantizer.assign(z), 16)
    assert after["codes_used"] > 0.8 and after["perplexity"] > 8


def test_codebook_usage_by_hand():
    stats = codebook_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert stats["perplexity"] == pytest.approx(2.0) and stats["codes_used"] == 0.5


def test_save_and_load_give_identical_ids_without_unpickling(cifar_images, tmp_path):
    tok = _tiny(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    tok.quantizer.restart_dead(tok.encode(cifar_images[:8]).flatten(0, 1).detach())
    save_tokenizer(tok, tmp_path / "tok", stats={"perplexity": 3.0})
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["config"]["codebook_size"] == 16 and meta["stats"] == {"perplexity": 3.0}
    again = load_tokenizer(tmp_path / "tok")
    assert again.cfg == tok.cfg and again.vocab_size == 16
    assert torch.equal(again(cifar_images[:8]), tok(cifar_images[:8]))
    assert not any(p.requires_grad for p in again.parameters())
    assert torch.equal(load_tokenizer(tmp_path / "tok" / "tokenizer.safetensors")(cifar_images[:2]),
                       tok(cifar_images[:2]))  # a file of the folder means the folder
    with pytest.raises(ConfigError, match=r"beit.tokenizer: .* is not a tokenizer folder"):
        load_tokenizer(tmp_path / "nowhere", "beit.tokenizer")
    meta["config"]["codebook_size"] = 32
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"quantizer.codebook is \(16, 8\), its config gives \(32, 8\)"):
        load_tokenizer(tmp_path / "tok")
    meta["config"]["colour"] = 1
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="unknown tokenizer option"):
        load_tokenizer(tmp_path / "tok")


def test_tokenizer_train_cli_reports_usage_and_error_per_epoch(cifar_subset, tmp_path):
    data = cifar_subset(20, 5)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(data), "--out", str(out), "--epochs", "4", "--batch-size",
                 "50", "--codebook-size", "64", "--code-dim", "16", "--hidden", "32", "--lr", "3e-3"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and records[-1]["step"] == 16
    assert records[-1]["recon_mse"] < records[0]["recon_mse"]
    assert records[-1]["perplexity"] > 4 and 0 < records[-1]["codes_used"] <= 1
    assert all((out / f"recon_epoch{e:03d}.png").is_file() for e in range(1, 5))
    tok = load_tokenizer(out)
    assert tok.cfg.mean == (0.485, 0.456, 0.406)  # a folder: ImageNet statistics unless --mean
    stats = json.loads((out / "tokenizer.json").read_text())["stats"]
    assert stats["held_out"] == "test split" and stats["recon_mse"] == records[-1]["recon_mse"]
