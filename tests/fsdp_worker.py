"""One rank of tests/test_train_devices.py::test_fsdp2_sharded_step_saves_the_gathered_draft (run by torchrun).

HF Trainer runs FSDP only on GPUs (accelerate silently falls back to DDP on CPU), so this applies
FSDP2 the way accelerate's `fsdp2_prepare_model` does (its transformer auto-wrap policy, which reads
the module's `_no_split_modules`, then the root), over gloo on CPU. One SGD step on the sharded
draft must equal the same step on the plain draft; the full state gathered as accelerate gathers it
for `Trainer.save_model` goes through `DraftTrainer._save` into the draft folder.

    torchrun --nproc_per_node 2 tests/fsdp_worker.py BASE_DIR DATA OUT
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist


def main(base_dir: str, data: str, out: str) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, get_module_children_bottom_up
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from specforge_het.config import Config
    from specforge_het.train import build_trainer

    torch.set_num_threads(1)
    cfg = Config()
    m, t = cfg.modeling, cfg.training
    m.base_model, m.algorithm, m.vocab, m.draft_vocab_size = base_dir, "eagle_v3", "reduced", 150
    cfg.dataset.path, cfg.dataset.eval_fraction = data, 0.0
    t.output_dir, t.precision, t.ddp_backend = out, "fp32", "gloo"
    cfg.eagle_v3.ttt_steps = 2
    trainer, _ = build_trainer(cfg, [])  # HF sets up the gloo process group (torchrun env, device cpu)
    module = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])  # the same batch on every rank
    lr = 0.5

    def step(mod) -> float:
        out_ = mod(**batch)
        loss = out_["loss"] / out_["count"]
        loss.backward()
        torch.optim.SGD([p for p in mod.parameters() if p.requires_grad], lr=lr).step()
        return float(loss)

    start = {k: v.clone() for k, v in module.draft.state_dict().items()}
    ref_loss = step(module)
    ref = {k: v.detach().clone() for k, v in module.draft.state_dict().items()}
    module.draft.load_state_dict(start)
    module.zero_grad(set_to_none=True)

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                                            state_dict_type="FULL_STATE_DICT")
    plugin.set_auto_wrap_policy(module)  # from module._no_split_modules
    policy = fsdp2_prepare_auto_wrap_policy(plugin, module)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for sub in get_module_children_bottom_up(module)[:-1]:
        if policy(sub) and not isinstance(sub, FSDPModule):
            fully_shard(sub, mesh=mesh)
    fully_shard(module, mesh=mesh)
    wrapped = [type(layer).__name__ for layer in module.draft.layers if isinstance(layer, FSDPModule)]
    shard_loss = step(module)
    local_rows = module.draft.fc.weight.to_local().shape[0]
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                  cpu_offload=True))
    trainer._save(out, state_dict=state)  # writes on rank 0 only (should_save)
    if dist.get_rank() == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.items()}, f"{out}/reference.safetensors")
    print("RESULT " + json.dumps({"rank": dist.get_rank(), "ref_loss": ref_loss, "shard_loss": shard_loss,
                                  "wrapped": wrapped, "no_split": module._no_split_modules, "local_rows": local_rows,
                                  "rows": module.draft.cfg.hidden_size, "gathered": len(state)}), flush=True)
    dist.barrier()
    # as train.main does: a process group left to interpreter exit aborted a rank there once in CI
    # ("terminate called without an active exception", after the results above were printed)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
