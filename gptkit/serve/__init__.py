"""`gptkit serve`: an OpenAI-compatible HTTP API over one model, and a page to talk to it.

api      what a request may ask (OpenAI's /v1/completions parameters, checked), errors and replies as
         OpenAI shapes them
engine   the decoding thread: the active requests as one gptkit.generate.DecodeBatch (one forward
         per step for all of them), a bounded queue, the text each request may be sent
server   the HTTP side (the standard library's ThreadingHTTPServer): routes, the API key, CORS,
         server-sent events, a client that goes away
page.html  the page at /, one file with its script inline: nothing comes from the internet
"""
