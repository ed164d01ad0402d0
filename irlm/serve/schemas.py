"""The request bodies of the search service, as strict pydantic models: what /search, /encode,
/v1/embeddings and /documents accept ("5" is not a number, an unknown field is a typo), with the BEIR
reader's id rule and no lone surrogates in a stored text."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from irlm.data.beir import ID_RULE, id_problem, text_problem


def not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain text, not only whitespace")
    return text


Text = Annotated[str, Field(min_length=1), AfterValidator(not_blank)]


class SearchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # strict: "5" is not a number; "top_k" is a typo
    query: Text
    k: int = Field(10, ge=1)


class EncodeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    texts: list[Text] = Field(min_length=1)
    kind: Literal["query", "passage"] = "query"


def no_token_ids(value):
    """OpenAI's API also takes token ids; this server embeds text only."""
    if isinstance(value, list) and any(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
        raise ValueError("token-id input is not supported: send a string or a list of strings")
    return value


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. `input_type` is this server's own field (OpenAI clients send it through
    `extra_body`): "query" (the default) embeds with the encoder's query prefix, "passage" with its passage prefix."""

    model_config = ConfigDict(strict=True, extra="forbid")
    input: Text | list[Text] = Field(min_length=1)
    model: str
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None  # OpenAI's end-user id: accepted, unused
    input_type: Literal["query", "passage"] = "query"

    _token_ids = field_validator("input", mode="before")(no_token_ids)


def valid_id(value: str) -> str:
    """The BEIR reader's id rule: an id that breaks it would break the TREC files `irlm search --out` writes."""
    problem = id_problem(value)
    if problem:
        raise ValueError(f"{ID_RULE}; {problem}")
    return value


def storable(text: str | None) -> str | None:
    """No lone surrogate (a JSON escape such as \\ud800): the index could not be saved as UTF-8."""
    problem = text_problem(text) if text else None
    if problem:
        raise ValueError(problem)
    return text


class NewDocument(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    id: Annotated[str, AfterValidator(valid_id)]
    text: Annotated[Text, AfterValidator(storable)]
    title: Annotated[str | None, AfterValidator(storable)] = None


def unique_ids(docs: list[NewDocument]) -> list[NewDocument]:
    seen = set()
    for doc in docs:
        if doc.id in seen:
            raise ValueError(f"id '{doc.id}' appears twice; send each document once")
        seen.add(doc.id)
    return docs


class DocumentsRequest(BaseModel):
    """Documents to add; one whose id is already indexed replaces it."""

    model_config = ConfigDict(strict=True, extra="forbid")
    documents: Annotated[list[NewDocument], Field(min_length=1), AfterValidator(unique_ids)]
