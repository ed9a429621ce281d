// Shared by the Socket.IO scripts: a failed check, and a promise bounded in time.
const WAIT_MS = 10000;

function check(cond, what) {
  if (!cond) throw new Error(what);
}

function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Runs `main`: prints "ok" and exits 0, or prints the failure and exits 1.
function run(main) {
  main().then(
    () => {
      console.log('ok');
      process.exit(0);
    },
    (e) => {
      console.log(`failed: ${e.message}`);
      process.exit(1);
    },
  );
}

module.exports = { check, within, run };
