// Compiles the reward contracts with solc-js and writes one artifact per contract to
// src/krewe/contracts/artifacts/: ABI, bytecode, the compiler version and settings, and the
// sha256 of every source that went in. Usage: node contracts/build.js [outDir]
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const outDir = path.resolve(process.argv[2] || path.join(root, "src/krewe/contracts/artifacts"));
const contracts = ["KrewToken", "WorkerRegistry", "RewardDistributor"];
const settings = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

const sources = {};
for (const name of contracts) {
  sources[`contracts/${name}.sol`] = { content: fs.readFileSync(path.join(__dirname, `${name}.sol`), "utf8") };
}
const used = {};
function findImports(importPath) {
  const file = path.join(root, "node_modules", importPath);
  if (!fs.existsSync(file)) return { error: `not found: ${importPath}` };
  const content = fs.readFileSync(file, "utf8");
  used[importPath] = content;
  return { contents: content };
}

const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources, settings }), { import: findImports }),
);
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const message of output.errors || []) console.error(message.formattedMessage);
if (errors.length) process.exit(1);

const allSources = { ...Object.fromEntries(Object.entries(sources).map(([k, v]) => [k, v.content])), ...used };
const sourceSha256 = {};
for (const key of Object.keys(allSources).sort()) {
  sourceSha256[key] = crypto.createHash("sha256").update(allSources[key]).digest("hex");
}
fs.mkdirSync(outDir, { recursive: true });
for (const name of contracts) {
  const compiled = output.contracts[`contracts/${name}.sol`][name];
  const artifact = {
    contractName: name,
    abi: compiled.abi,
    bytecode: "0x" + compiled.evm.bytecode.object,
    compiler: { version: solc.version(), settings: { evmVersion: settings.evmVersion, optimizer: settings.optimizer } },
    sourceSha256,
  };
  fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
}
console.log(`wrote ${contracts.length} artifacts to ${path.relative(root, outDir)}`);
