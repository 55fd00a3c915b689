"""Drives a live `tessera serve` with the official openai client.

Usage: openai_client.py BASE_URL API_KEY. Exits non-zero (with the failed
assertion) when the server answers anything an OpenAI client would not accept.
"""
import json
import sys
import urllib.request

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
model = client.models.list().data[0].id


def tokenize(**body):
    req = urllib.request.Request(
        base + "/tokenize",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["tokens"]


messages = [{"role": "user", "content": "What is the capital of France?"}]

# Chat, not streamed: the answer, and usage that matches the tokenizer.
chat = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=32, logprobs=True, top_logprobs=2
)
answer = chat.choices[0].message.content
assert "Paris" in answer, answer
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].finish_reason == "stop", chat.choices[0].finish_reason
assert chat.usage.prompt_tokens == len(tokenize(messages=messages)), chat.usage
assert chat.usage.completion_tokens == len(chat.choices[0].logprobs.content), chat.usage
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)
assert all(t.logprob <= 0 for t in chat.choices[0].logprobs.content)
print("chat:", repr(answer), chat.usage)

# Chat, streamed: the same text, a role first, a finish reason, usage last.
stream = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=32,
    stream=True, stream_options={"include_usage": True},
)
chunks = list(stream)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == answer, (text, answer)
assert chunks[0].choices[0].delta.role == "assistant"
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
print("chat stream:", len(chunks), "chunks")

# Completions: streamed = not streamed; max_tokens ends with "length".
prompt = "The capital of France is"
full = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12,
                                 extra_body={"ignore_eos": True})
assert full.choices[0].finish_reason == "length"
assert full.usage.completion_tokens == 12 and full.usage.prompt_tokens == len(tokenize(prompt=prompt))
parts = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12,
                                  stream=True, extra_body={"ignore_eos": True})
assert "".join(p.choices[0].text for p in parts) == full.choices[0].text
print("completion:", repr(full.choices[0].text))

# Stop strings: generation ends before the stop string, which is not returned.
words = full.choices[0].text.split()
assert len(words) >= 3, words
stop = " " + words[2]
cut = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12, stop=[stop])
assert cut.choices[0].finish_reason == "stop", cut.choices[0]
assert cut.choices[0].text == full.choices[0].text[: full.choices[0].text.index(stop)], cut.choices[0].text
print("stop:", repr(stop), "->", repr(cut.choices[0].text))

# n=2, seeded: two choices; the same seed gives the same choices, another seed others.
def sample(seed):
    r = client.completions.create(model=model, prompt="Once upon a time", n=2, temperature=1.0,
                                  max_tokens=16, seed=seed, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 32
    return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

a, b, c = sample(7), sample(7), sample(8)
assert a == b, (a, b)
assert a != c, (a, c)
assert a[0] != a[1], a
print("n=2 seeded:", a)

# Completions logprobs: one entry per token, top alternatives as asked.
lp = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=5, logprobs=3,
                               extra_body={"ignore_eos": True})
l = lp.choices[0].logprobs
assert len(l.tokens) == len(l.token_logprobs) == len(l.top_logprobs) == 5
assert "".join(l.tokens) == lp.choices[0].text
assert all(1 <= len(t) <= 3 for t in l.top_logprobs)
print("logprobs:", l.tokens)

# Errors come back as the client's typed exceptions.
try:
    client.completions.create(model=model, prompt=prompt, max_tokens=-1)
    raise AssertionError("max_tokens=-1 accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "max_tokens" in str(e)
try:
    client.completions.create(model="no-such-model", prompt=prompt, max_tokens=1)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("ok")
