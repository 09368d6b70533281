"""OpenAI chat messages → one prompt string through the model's own chat template."""

from __future__ import annotations

import json
from typing import Any

from .errors import ValidationError

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

TOOL_INSTRUCTIONS = (
    "You may call functions. The available functions, as JSON schemas:\n{tools}\n"
    "To call one, answer with <tool_call>{{\"name\": <function name>, \"arguments\": "
    "<JSON object>}}</tool_call> and nothing else."
)


def _text_of(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValidationError(
                    f"`{where}.content[{i}]` of type {kind!r} is not supported: this model "
                    "takes text parts only", param=f"{where}.content",
                )
        return "".join(parts)
    raise ValidationError(f"`{where}.content` must be a string or a list of parts",
                          param=f"{where}.content")


def _inline_tool_calls(msg: dict[str, Any]) -> dict[str, Any]:
    """For templates that know nothing of tool calls: write them into the content in the
    same `<tool_call>` form the parser reads, so the model sees what it called."""
    calls = "".join(
        "<tool_call>" + json.dumps({"name": c["function"].get("name"),
                                    "arguments": c["function"].get("arguments", {})},
                                   ensure_ascii=False) + "</tool_call>"
        for c in msg.pop("tool_calls"))
    msg["content"] = (msg.get("content") or "") + calls
    return msg


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "developer":
            role = "system"  # newer OpenAI clients send "developer" for system prompts
        msg: dict[str, Any] = {"role": role, "content": _text_of(m.get("content"),
                                                                 f"messages[{i}]") or ""}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:  # templates render arguments with tojson: give them an object
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        fn["arguments"] = args
                calls.append({"id": c.get("id"), "type": "function", "function": fn})
            msg["tool_calls"] = calls
        if role == "tool":
            msg["tool_call_id"] = m.get("tool_call_id")
            if m.get("name"):
                msg["name"] = m["name"]
        out.append(msg)
    return out


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None) -> str:
    msgs = normalize_messages(messages)
    template = getattr(tokenizer, "chat_template", None)
    if not template or "tool_calls" not in template:
        msgs = [_inline_tool_calls(m) if m.get("tool_calls") else m for m in msgs]
    kwargs: dict[str, Any] = {}
    if tools:
        if template and "tools" in template:
            kwargs["tools"] = tools
        else:
            # the template knows nothing of tools: describe them in a system message
            text = TOOL_INSTRUCTIONS.format(
                tools="\n".join(json.dumps(t.get("function", t)) for t in tools))
            if msgs and msgs[0]["role"] == "system":
                msgs[0] = {**msgs[0], "content": msgs[0]["content"] + "\n\n" + text}
            else:
                msgs.insert(0, {"role": "system", "content": text})
    try:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True,
            chat_template=None if template else _FALLBACK_TEMPLATE, **kwargs,
        )
    except Exception as exc:  # template errors (e.g. role order rules) are the caller's
        raise ValidationError(f"`messages` cannot be rendered by the chat template: {exc}",
                              param="messages") from exc
