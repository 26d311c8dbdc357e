// Validates a Teams app manifest with Microsoft's own validators, offline.
//
//   node validate.cjs PREFIX manifest.json
//
// PREFIX is an npm prefix holding @microsoft/teams-manifest and @microsoft/app-manifest.
// ManifestUtil.validateManifest() of teams-manifest would fetch the manifest's $schema
// URL; instead the schema is read from the copy that app-manifest bundles
// (build/json-schemas/teams/vX.Y/MicrosoftTeams.schema.json) and handed to both
// packages' validate-against-this-schema functions. fetch is disabled, so nothing can
// reach the network unnoticed. App-manifest's typed converter checks the value types too.
//
// Prints {"schema": file, "errors": [...]} and exits 0, errors or not; exits 2 when it
// cannot validate at all (no bundled schema for that version, a broken install).
"use strict";
const fs = require("fs");
const path = require("path");

function fail(message) {
  process.stderr.write(`validate.cjs: ${message}\n`);
  process.exit(2);
}

const [prefix, manifestFile] = process.argv.slice(2);
if (!prefix || !manifestFile) fail("usage: node validate.cjs PREFIX manifest.json");
const noNetwork = () => Promise.reject(new Error("validate.cjs: no network access"));
globalThis.fetch = noNetwork;

const modules = path.join(prefix, "node_modules", "@microsoft");
const { ManifestUtil } = require(path.join(modules, "teams-manifest"));
const { AppManifestUtils, TeamsManifestConverter } = require(path.join(modules, "app-manifest"));

const text = fs.readFileSync(manifestFile, "utf8");
const manifest = JSON.parse(text);
const match = /^https:\/\/developer\.microsoft\.com\/(?:[a-z]{2}-[a-z]{2}\/)?json-schemas\/teams\/(v[0-9A-Za-z.]+)\/MicrosoftTeams\.schema\.json$/.exec(
  manifest.$schema || "",
);
if (!match) fail(`not a Teams manifest schema URL: ${JSON.stringify(manifest.$schema)}`);
const schemaFile = path.join(
  modules, "app-manifest", "build", "json-schemas", "teams", match[1], "MicrosoftTeams.schema.json",
);
if (!fs.existsSync(schemaFile)) fail(`@microsoft/app-manifest bundles no schema ${match[1]}`);
// The published schemas hold "\a" and "\v" escapes that JSON lacks: app-manifest's fix.
const schema = JSON.parse(
  fs.readFileSync(schemaFile, "utf8").replace(/\\a/g, "\\u0007").replace(/\\v/g, "\\u000b"),
);

(async () => {
  const errors = [];
  for (const error of await ManifestUtil.validateManifestAgainstSchema(manifest, schema)) {
    errors.push(`teams-manifest: ${error}`);
  }
  for (const error of await AppManifestUtils.validateAgainstSchema(manifest, schema)) {
    errors.push(`app-manifest: ${error}`);
  }
  try {
    TeamsManifestConverter.jsonToManifest(text);
  } catch (error) {
    errors.push(`app-manifest converter: ${error.message}`);
  }
  process.stdout.write(JSON.stringify({ schema: schemaFile, errors }) + "\n");
})().catch((error) => fail(error.stack || String(error)));
