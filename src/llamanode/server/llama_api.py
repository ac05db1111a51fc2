"""llama-server's utility routes, with its field names: /tokenize, /detokenize, /apply-template.

Their request and response models live here: they are small and nothing else uses them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..chat import messages_from_mappings
from ..errors import UnsupportedFeatureError
from .errors import from_exception
from .openai_api import chat_tool_plan
from .prepare import check_model, check_prompt_size
from .runtime import Runtime
from .schemas import ChatCompletionRequest, StrictModel
from .web import ERROR_RESPONSES, JsonRoute, RuntimeDep, json_response

__all__ = ["router"]

router = APIRouter(route_class=JsonRoute, tags=["llama-server"])
TokenId = Annotated[int, Field(ge=0)]


class TokenizeRequest(StrictModel):
    content: Annotated[
        str | list[str | TokenId],
        Field(description="Text, or llama-server's mixed form: text pieces and token ids, in order."),
    ]
    add_special: Annotated[bool, Field(description="BOS first, when the vocabulary adds one.")] = False
    parse_special: Annotated[bool, Field(description="Only true (special tokens parsed) is supported.")] = True
    with_pieces: bool = False


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int]  # the token's text, or its bytes when they are not valid UTF-8 on their own


class TokenizeResult(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(StrictModel):
    tokens: list[TokenId]


class DetokenizeResult(BaseModel):
    content: str


class ApplyTemplateRequest(ChatCompletionRequest):
    """A chat-completions body (llama-server accepts the same); only messages and tools matter here."""

    model: str | None = None  # type: ignore[assignment]


class ApplyTemplateResult(BaseModel):
    prompt: str


@router.post("/tokenize", summary="Tokenize text", responses={200: {"model": TokenizeResult}, **ERROR_RESPONSES})
async def tokenize(body: TokenizeRequest, rt: RuntimeDep) -> Response:
    if not body.parse_special:
        raise from_exception(UnsupportedFeatureError("parse_special false"), "parse_special")
    pieces: list[str | int] = [body.content] if isinstance(body.content, str) else list(body.content)
    check_prompt_size(rt, sum(len(p.encode()) for p in pieces if isinstance(p, str)), "content")
    tokens = await run_in_threadpool(_tokenize_mixed, rt, pieces, body.add_special)
    if not body.with_pieces:
        return json_response(TokenizeResult(tokens=tokens))
    pieces_out = await run_in_threadpool(
        lambda: [TokenPiece(id=t, piece=_piece(rt.model_probe.token_bytes(t))) for t in tokens]
    )
    return json_response(TokenizeResult(tokens=pieces_out))


@router.post(
    "/detokenize", summary="Token ids to text", responses={200: {"model": DetokenizeResult}, **ERROR_RESPONSES}
)
async def detokenize(body: DetokenizeRequest, rt: RuntimeDep) -> Response:
    raw = await run_in_threadpool(lambda: b"".join(rt.model_probe.token_bytes(t) for t in body.tokens))
    return json_response(DetokenizeResult(content=raw.decode("utf-8", errors="replace")))


@router.post(
    "/apply-template",
    summary="The prompt a chat request renders to (the model's template; tools included)",
    responses={200: {"model": ApplyTemplateResult}, **ERROR_RESPONSES},
)
async def apply_template(body: ApplyTemplateRequest, rt: RuntimeDep) -> Response:
    if body.model is not None:
        check_model(rt, body.model)
    chat = messages_from_mappings([m.model_dump(exclude_none=True) for m in body.messages])
    plan = chat_tool_plan(rt, body)
    prompt = plan.render(chat) if plan is not None else rt.template.render(chat)
    return json_response(ApplyTemplateResult(prompt=prompt))


def _tokenize_mixed(rt: Runtime, pieces: list[str | int], add_special: bool) -> list[int]:
    """Text pieces tokenized (add_special for the first piece only, as llama-server does), ids kept."""
    tokens: list[int] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, str):
            tokens += rt.model_probe.tokenize(piece, add_special and index == 0)
        else:
            rt.model_probe.token_bytes(piece)  # InvalidInputError outside the vocabulary
            tokens.append(piece)
    return tokens


def _piece(raw: bytes) -> str | list[int]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)
