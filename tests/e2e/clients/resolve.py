"""dnspython's stub resolver (/etc/resolv.conf: nameserver, search list, ndots) with the search
list on, as applications call it: Resolver.resolve for A, then AAAA, for each name on the command
line (Debian's dnspython 2.3 has no resolve_name). One line per name:
  name <TAB> milliseconds <TAB> addresses, comma-separated <TAB> error ("" or NOTFOUND or why)
"""
import sys
import time

import dns.resolver

resolver = dns.resolver.Resolver()
for name in sys.argv[1:]:
    t0 = time.monotonic()
    addrs, why = [], ""
    try:
        for rdtype in ("A", "AAAA"):
            answer = resolver.resolve(name, rdtype, search=True, raise_on_no_answer=False)
            addrs += [r.address for r in answer]
    except dns.resolver.NXDOMAIN:
        why = "NOTFOUND"
    except Exception as e:  # any other outcome is a failure the test reports
        why = f"{type(e).__name__}: {e}"
    ms = (time.monotonic() - t0) * 1000
    print(f"{name}\t{ms:.1f}\t{','.join(addrs)}\t{why}", flush=True)
