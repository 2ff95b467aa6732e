'use strict';
// grpc.health.v1.Health: SERVING while the upstream is connected and the view is fresh (C9, C11,
// C30, C31), NOT_SERVING otherwise and from the start of shutdown. It needs no token (C16).

const grpc = require('@grpc/grpc-js');
const { SERVICE_NAME } = require('./contract');

const KNOWN = new Set(['', SERVICE_NAME]);

class Health {
  constructor(isServing) {
    this.isServing = isServing;
    this.watchers = new Set();
    this.last = null;
  }

  status() {
    return this.isServing() ? 'SERVING' : 'NOT_SERVING';
  }

  // Push the status to watchers when it changed.
  changed() {
    const now = this.status();
    if (now === this.last) return;
    this.last = now;
    for (const call of this.watchers) call.write({ status: now });
  }

  handlers() {
    return {
      Check: (call, callback) => {
        if (!KNOWN.has(call.request.service)) {
          callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
          return;
        }
        callback(null, { status: this.status() });
      },
      Watch: (call) => {
        if (!KNOWN.has(call.request.service)) {
          call.write({ status: 'SERVICE_UNKNOWN' });
          return;
        }
        call.write({ status: this.status() });
        this.watchers.add(call);
        const gone = () => this.watchers.delete(call);
        call.on('cancelled', gone);
        call.on('close', gone);
      },
    };
  }

  endAll() {
    for (const call of this.watchers) call.end();
    this.watchers.clear();
  }
}

module.exports = { Health };
