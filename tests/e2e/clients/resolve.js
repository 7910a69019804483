// c-ares through Node.js dns.Resolver: resolve4 and resolve6 in parallel for each name on the
// command line (no search list: c-ares' ares_query, nodejs/node#17850). One line per name:
//   name <TAB> milliseconds <TAB> addresses, comma-separated <TAB> error ("" or NOTFOUND or why)
'use strict';
const { Resolver } = require('node:dns').promises;

async function main() {
  const resolver = new Resolver();
  for (const name of process.argv.slice(2)) {
    const t0 = process.hrtime.bigint();
    const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const addrs = [];
    const errors = [];
    for (const r of results) {
      if (r.status === 'fulfilled') addrs.push(...r.value);
      // ENODATA: the name exists without records of this family (an A-only or AAAA-only name).
      else if (r.reason.code !== 'ENODATA') errors.push(r.reason.code);
    }
    let why = errors.join('/');
    if (addrs.length === 0 && errors.length > 0 && errors.every((c) => c === 'ENOTFOUND')) why = 'NOTFOUND';
    console.log(`${name}\t${ms.toFixed(1)}\t${addrs.join(',')}\t${why}`);
  }
}

main();
