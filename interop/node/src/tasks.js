'use strict';
// The connector's own count of its concurrent tasks (calls and streams in progress, upstream
// calls in flight), reported as exchange_connector_tasks: it must not grow with the clients
// that come and go (rule C14).

class Tracker {
  constructor() {
    this.live = 0;
  }

  // Count one task; the returned function ends it (once, however often it is called).
  begin() {
    this.live += 1;
    let open = true;
    return () => {
      if (open) {
        open = false;
        this.live -= 1;
      }
    };
  }

  // Count a client call of grpc-js until its status arrives.
  track(call) {
    const done = this.begin();
    call.on('status', done);
    call.on('error', done);
    return call;
  }
}

module.exports = { Tracker };
