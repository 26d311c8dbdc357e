// Loaded with `node --require` before the Agents Playground: it calls listen(port) with no
// host, which binds every interface, and has no option to change that. Any listen() that
// names no host (or a wildcard one) binds 127.0.0.1 instead.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
const WILDCARD = new Set([undefined, null, "", "0.0.0.0", "::"]);
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === "object" && !Array.isArray(first)) {
    if (first.path === undefined && first.handle === undefined && first.fd === undefined &&
        WILDCARD.has(first.host)) {
      args[0] = { ...first, host: "127.0.0.1" };
    }
  } else if (typeof first === "number" || typeof first === "string" || first === undefined ||
             typeof first === "function") {
    const isPipe = typeof first === "string" && !/^\d+$/.test(first);
    if (!isPipe) {
      if (typeof first === "function" || first === undefined) args.unshift(0);
      if (typeof args[1] === "string") {
        if (WILDCARD.has(args[1])) args[1] = "127.0.0.1";
      } else {
        args.splice(1, 0, "127.0.0.1");
      }
    }
  }
  return listen.apply(this, args);
};
