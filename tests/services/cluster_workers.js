// A Node server on the `cluster` module: the primary forks WORKERS workers that all listen on
// PORT (the primary shares the listening socket and hands connections out, Node's default on
// Linux). Every answer carries `x-served-by: worker-<id>`.
//
// usage: node cluster_workers.js PORT WORKERS
// Prints "listening <n workers>" once every worker listens.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.argv[2]);
const workers = Number(process.argv[3]);

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) {
      console.log(`listening ${listening}`);
    }
  });
  cluster.on('exit', (w, code) => {
    console.error(`worker ${w.id} exited (${code})`);
    process.exit(1);
  });
  for (let i = 0; i < workers; i++) {
    cluster.fork();
  }
  const stop = () => {
    cluster.removeAllListeners('exit');
    for (const w of Object.values(cluster.workers)) w.kill();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const name = `worker-${cluster.worker.id}`;
  http
    .createServer((req, res) => {
      const body = `${name}: ${req.method} ${req.url}\n`;
      res.writeHead(200, { 'x-served-by': name, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    })
    .listen(port, '0.0.0.0');
}
