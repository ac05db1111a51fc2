"""Templates beyond the default model's: constructs llama.cpp and transformers render (the
`{% generation %}` tag, macros, namespaces, methods used as filters), compared with llama-server's
own rendering of the same template; and templates llamanode cannot render, refused at construction
with the construct named. The templates here are written for these tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.processes import LLAMA_SERVER, Server, free_port
from llamanode import default_model_path
from llamanode.chat import ChatMessage, ChatTemplate, ChatTemplateError

# generation tags around the assistant turns, a macro, a namespace carried out of a loop
TRAINING = """\
{%- macro turn(role, text) -%}
<|im_start|>{{ role }}
{{ text | trim }}<|im_end|>
{% endmacro -%}
{%- set ns = namespace(system=none, turns=0) -%}
{%- for m in messages if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endfor -%}
{%- if ns.system is not none -%}{{ turn('system', ns.system) }}{%- endif -%}
{%- for m in messages if m.role != 'system' -%}
{%- set ns.turns = ns.turns + 1 -%}
{%- if m.role == 'assistant' -%}
<|im_start|>assistant
{% generation %}{{ m.content }}<|im_end|>
{% endgeneration %}
{%- else -%}{{ turn(m.role, m.content) }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}"""

# the same format with a plain block where the generation tag was: what the tagged template must render
PLAIN = TRAINING.replace("{% generation %}", "{% if true %}").replace("{% endgeneration %}", "{% endif %}")

# loop variables, filters (llama.cpp lets `strip` be a filter), string methods, slices, tojson
FILTERS = """\
{%- for m in messages -%}
[{{ loop.index }}/{{ loop.length }}] {{ m.role | upper }}: {{ m.content | strip }} \
({{ m.content.split(' ') | length }} words{% if m.content.startswith('Hello') %}, greeting{% endif %})
{% if not loop.last %}--
{% endif %}
{%- endfor -%}
users: {{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(', ') }}
last: {{ messages[-1].content | tojson }} first-of-{{ messages[:1] | length }}
{%- if add_generation_prompt %}
>>> {% endif %}"""

CONVERSATIONS = [
    [("user", "Hello there")],
    [("system", "  Be brief.  "), ("user", "Hello"), ("assistant", "Hi! How can I help?"), ("user", "Explain é 😀")],
    [("user", "a b c"), ("assistant", "  spaced  "), ("user", 'quote " and \\ backslash')],
]


def _chat(pairs: list[tuple[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(role, content) for role, content in pairs]


def test_the_generation_tag_renders_its_body() -> None:
    tagged, plain = ChatTemplate(TRAINING), ChatTemplate(PLAIN)
    for pairs in CONVERSATIONS:
        assert tagged.render(_chat(pairs)) == plain.render(_chat(pairs))
    text = tagged.render(_chat(CONVERSATIONS[1]), add_generation_prompt=False)
    assert "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_methods_work_as_filters_like_llama_cpp() -> None:
    source = "{{ ' a b ' | strip }}|{{ 'x,y' | split(',') | join('+') }}|{{ 'abc' | startswith('a') }}|"
    source += "{{ {'k': 1} | keys | list }}|{{ {'k': 1} | get('k') }}|{{ '..x..' | rstrip('.') }}"
    assert ChatTemplate(source).render([]) == "a b|x+y|True|['k']|1|..x"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("hello\n{% weird %}", "unknown tag 'weird'"),
        ("{{ messages | frobnicate }}", "No filter named 'frobnicate'"),
        ("{% for m in messages %}\n{{ render_tool(m) }}{% endfor %}", "'render_tool' is undefined"),
        ("{% set x = [] %}{{ x.append(1) }}", "append"),
        ("{{ messages.__class__.__mro__ }}", "__class__"),
    ],
    ids=["unknown-tag", "unknown-filter", "unknown-function", "list-mutation", "sandbox"],
)
def test_a_template_llamanode_cannot_render_is_refused_at_construction_naming_it(source: str, named: str) -> None:
    with pytest.raises(ChatTemplateError, match=named) as info:
        ChatTemplate(source)
    assert "line" in str(info.value)


def test_the_line_of_a_failure_is_named() -> None:
    with pytest.raises(ChatTemplateError, match=r"line 2"):
        ChatTemplate("{% for m in messages %}\n{{ nope() }}{% endfor %}")


def test_a_template_that_refuses_conversations_itself_still_loads() -> None:
    strict = "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}ok"
    template = ChatTemplate(strict)
    assert template.render(_chat([("user", "x")])) == "ok"
    always = ChatTemplate("{{ raise_exception('this model only does completions') }}")
    with pytest.raises(ChatTemplateError, match="only does completions"):
        always.render(_chat([("user", "x")]))


# -- against llama.cpp's own rendering --------------------------------------------------------


@pytest.fixture(scope="module", params=[("training", TRAINING), ("filters", FILTERS)], ids=lambda p: p[0])
def llama_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, httpx.Client]]:
    if not LLAMA_SERVER.exists():
        pytest.skip(f"{LLAMA_SERVER} not built (bench/build_llama_server.sh)")
    name, source = request.param
    tmp = tmp_path_factory.mktemp(name)
    template = tmp / f"{name}.jinja"
    template.write_text(source, encoding="utf-8")
    port = free_port()
    cmd = [str(LLAMA_SERVER), "-m", str(default_model_path()), "--port", str(port), "-c", "512", "-t", "1"]
    cmd += ["-np", "1", "--jinja", "--no-webui", "--chat-template-file", str(template)]
    with (
        Server("llama-server", cmd, port, "/health") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        server.start(tmp, timeout=60)
        yield source, client


@pytest.mark.parametrize("pairs", CONVERSATIONS, ids=[str(i) for i in range(len(CONVERSATIONS))])
def test_rendering_equals_llama_servers(llama_server: tuple[str, httpx.Client], pairs: list[tuple[str, str]]) -> None:
    source, client = llama_server
    response = client.post("/apply-template", json={"messages": [{"role": r, "content": c} for r, c in pairs]})
    assert response.status_code == 200, response.text
    assert ChatTemplate(source).render(_chat(pairs)) == response.json()["prompt"]
