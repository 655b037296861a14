"""
The request-smuggling corpus: a generator of malformed and ambiguous HTTP/1.1
request streams (L{tests.smuggling.payloads}), a strict reference parser that
says what each one means (L{tests.smuggling.reference}), and the harness that
sends them through the proxy to a recording backend and judges what arrived
(L{tests.smuggling.harness}).  See C{docs/corpus.md}.
"""
