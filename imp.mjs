const spec = process.argv[2];
globalThis.gc(); const a = process.memoryUsage();
await import(spec);
await new Promise(r=>setTimeout(r,200)); globalThis.gc(); globalThis.gc(); const b = process.memoryUsage();
console.log(spec.padEnd(40), "heap", ((b.heapUsed-a.heapUsed)/1048576).toFixed(2), "rss", ((b.rss-a.rss)/1048576).toFixed(2));
