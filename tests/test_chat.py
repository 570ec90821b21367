"""The one chat renderer and end-of-sequence rule (specforge_het.chat), shared by inference and data."""

import copy

import torch

from specforge_het.chat import end_ids, eos_ids, plain_text, render, render_text, with_system
from specforge_het.data.formats import tokenize_conversation
from specforge_het.inference import prompts
from specforge_het.inference.decoder import Decoder

USER = [{"role": "user", "content": "Hi there"}]
MULTI = [*USER, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More?"}]


def test_render_is_the_chat_template_with_a_generation_prompt(tok_a):
    for messages in (USER, MULTI):
        ids = render(tok_a, messages)
        assert ids.dim() == 2 and ids.shape[0] == 1 and ids.dtype == torch.long
        want = tok_a.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert ids[0].tolist() == want["input_ids"]
    assert tok_a.decode(render(tok_a, USER, system_prompt="Be brief.")[0]).startswith("<|system|>Be brief.<|end|>")


def test_system_prompt_is_not_added_twice(tok_a):
    own = [{"role": "system", "content": "Mine."}, *USER]
    assert with_system(own, "Other.") == own
    assert render(tok_a, own, system_prompt="Other.").tolist() == render(tok_a, own).tolist()


def test_plain_layout_without_a_template(tok_a):
    assert tok_a.decode(render(tok_a, USER, use_template=False)[0]) == "User: Hi there\nAssistant:"
    no_template = copy.deepcopy(tok_a)
    no_template.chat_template = None
    assert render(no_template, MULTI, system_prompt="S").tolist() == render(tok_a, MULTI, False, "S").tolist()
    assert plain_text(MULTI, False) == "User: Hi there\nAssistant: Hello!\nUser: More?\n"
    assert render_text(tok_a, MULTI, True, template=False) == plain_text(MULTI, True)


def test_decoder_prompts_are_the_ids_it_always_rendered(tok_a):
    """inference/prompts.py renders through this module, with the ids of its former own renderer: the chat
    template with a generation prompt, or the plain layout with the tokenizer's usual specials."""
    no_template = copy.deepcopy(tok_a)
    no_template.chat_template = None
    for system_prompt in ("", "Be brief."):
        messages = with_system(MULTI, system_prompt)
        want = tok_a.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert prompts.render(tok_a, MULTI, system_prompt=system_prompt)[0].tolist() == want["input_ids"]
        plain = tok_a(plain_text(messages, True)).input_ids
        assert prompts.render(tok_a, MULTI, False, system_prompt)[0].tolist() == plain
        assert prompts.render(no_template, MULTI, system_prompt=system_prompt)[0].tolist() == plain
        assert prompts.render(tok_a, MULTI, system_prompt=system_prompt).dtype == torch.long


def test_prompt_ids_are_a_prefix_of_the_training_row(tok_a):
    """Data rows and decoder prompts come from the same rendering: the prompt is a prefix of the row."""
    full = [*MULTI, {"role": "assistant", "content": "Sure."}]
    ids, mask = tokenize_conversation(tok_a, full, max_length=None)
    prompt = render(tok_a, MULTI)[0].tolist()
    assert ids[: len(prompt)] == prompt and not any(mask[len(prompt) - 1: len(prompt)])


def test_eos_ids_take_every_source(llama_base):
    class Src:
        def __init__(self, eos):
            self.eos_token_id = eos

    assert end_ids(Src(2), Src([2, 7]), Src(None), None) == {2, 7}
    want = end_ids(getattr(llama_base.model, "generation_config", None), llama_base.config, llama_base.tokenizer)
    assert eos_ids(llama_base) == want and want
    assert Decoder(llama_base).eos == want  # the decoder stops on the same ids
