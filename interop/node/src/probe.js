'use strict';
// `health`: one grpc.health.v1 Check; exit 0 only when the answer is SERVING.

const grpc = require('@grpc/grpc-js');
const { healthClientConstructor } = require('./contract');

function probe({ address, ca, timeout }) {
  const Client = healthClientConstructor();
  const credentials = ca ? grpc.credentials.createSsl(ca) : grpc.credentials.createInsecure();
  const client = new Client(address, credentials);
  const deadline = Date.now() + 1000 * Number(timeout || 3);
  client.Check({ service: '' }, { deadline }, (error, answer) => {
    client.close();
    if (error) {
      process.stdout.write(`not healthy: ${grpc.status[error.code] || ''} ${error.details || error.message}\n`);
      process.exit(1);
    }
    if (answer.status !== 'SERVING') {
      process.stdout.write(`not healthy: ${answer.status}\n`);
      process.exit(1);
    }
    process.exit(0);
  });
}

module.exports = { probe };
