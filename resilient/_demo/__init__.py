"""Watch resilience at work: one flaky service, called with and without it.

Two groups of clients send the same traffic to two identical simulated services
(same timeline, same dice) for --duration seconds. Each client sends a request
about every 100 ms without waiting for the last one's answer, as a web server
does for its users. The service has 5 workers per client; a call holds one until
it is answered or its caller gives up, and a call that finds none free is turned
away (503). Its timeline (at --intensity normal):

  healthy          answers in about 30 ms; 1% of calls fail
  latency spikes   a fifth of the calls take 0.4-1.2 s
  error burst      a quarter of the calls fail
  outage           calls hang, each holding its worker until the caller gives up
  recovery         healthy again, for calls that can get a worker

The unguarded clients await the service with a 5 s client timeout, like an HTTP
client's default. The resilient clients make the same call through

  Pipeline(
      Bulkhead(2 * clients, max_wait=50ms),  requests in flight at once
      Timeout(1s),                           each request, retries included
      Retry(3, exponential backoff),         on ConnectionError and timeouts
      CircuitBreaker(open_for=1s),           opens when 50% of the last 100
                                             attempts failed
      Timeout(250ms),                        each attempt
  )

A live view shows both groups side by side, and a summary says what changed.

The policies are named "demo" (the per-attempt timeout "demo-attempt"), so
RESILIENT_* variables retune them with no code change. Try:

  RESILIENT_DEMO_BREAKER_OPEN_FOR=5s        probe the failing service less often
  RESILIENT_DEMO_BREAKER_STATE=disabled     timeouts and retries, but no breaker
  RESILIENT_DEMO_BREAKER_STATE=forced_open  refuse every call
  RESILIENT_DEMO_RETRY_ATTEMPTS=1           no retries
  RESILIENT_ENABLED=0                       every policy a pass-through

'resilient env' lists every variable.
"""

# An application built on resilient, not a part of the library: only `resilient demo`
# imports it, when it runs (tests/test_demo.py checks that `import resilient` and
# `resilient --help` do not). This docstring is the command's --help. The modules:
#   scenario     the simulated service, the phases of a run and how bad they are
#   policies     the resilient group's Pipeline, and each option's value and source
#   settings     the command line, parsed into Settings
#   simulation   the clients, both groups, and the run
#   view         the live panel on a terminal, or a line a second
#   summary      what happened, as the data --json prints
#   report       the banner before the run, the summary's text after it
#   chart        the run drawn (--chart): composed once as shapes, from what the run recorded
#   drawing      shapes, and their SVG and PNG renderings; no plotting library
#   raster       the PNG's pixels: rectangles, lines, a bitmap font, the encoding
#   command      main(): all of the above, in order
