// Drive @jupyterhub/binderhub-client's BinderRepository.fetch() against a live service and print
// every item it yields, one JSON line each, until its iterator ends.
// usage: node fetch.mjs <build endpoint URL> <provider spec> [build_only]
globalThis.window = globalThis; // fetch-event-source reads window.fetch and window.setTimeout

const { BinderRepository } = await import("@jupyterhub/binderhub-client/client.js");
const [endpoint, spec, buildOnly] = process.argv.slice(2);
const repo = new BinderRepository(spec, new URL(endpoint), { buildOnly: buildOnly === "build_only" });
const deadline = setTimeout(() => {
  console.log(JSON.stringify({ phase: "test-timeout" }));
  repo.close();
}, 30000);
console.log = ((log) => (...args) => {
  // the client logs its errors with console.log; keep stdout for the yielded items only
  if (typeof args[0] === "string" && args[0].startsWith("{")) log(...args);
  else console.error(...args);
})(console.log);
// once its queue has stopped the client's own fetch may still reject (AbortError): not an answer
process.on("unhandledRejection", (error) => console.error("unhandled rejection:", error));
for await (const item of repo.fetch()) {
  console.log(JSON.stringify(item));
}
clearTimeout(deadline);
