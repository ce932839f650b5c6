// The browser verifier's errors, those of verifier/errors.py and one for the caller:
//
//   SolvencyError            base of everything the verifier throws about its input
//   ├── FormatError          the input is malformed: bytes, JSON, types or ranges
//   └── VerificationError    well formed, but a check failed; `check` names it
//                            (docs/PROTOCOL.md §7: the same names as the Python verifier)
//   UsageError               the caller's options (a key, the witnesses, the quorum,
//                            the clock) cannot be used: the CLI's exit status 2
//
// Anything else thrown from these modules is a bug of ours (or a missing WebCrypto).

export class SolvencyError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

export class FormatError extends SolvencyError {}

export class VerificationError extends SolvencyError {
  /** `check`: the stable name of the failed check; `detail`: what failed, without it. */
  constructor(check, detail) {
    super(`${check}: ${detail}`);
    this.check = check;
    this.detail = detail;
  }
}

export class UsageError extends Error {
  constructor(message) {
    super(message);
    this.name = "UsageError";
  }
}
