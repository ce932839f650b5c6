// Amounts and times as the CLI prints them (verifier/display.py): exact decimals of
// BigInt units, UTC times of BigInt milliseconds.

/** `value` smallest units as an exact decimal number of `decimals` places, trailing
 * zeros dropped (verifier/cli.py's format_amount). */
export function formatAmount(value, decimals) {
  if (decimals === 0) return String(value);
  const unit = 10n ** BigInt(decimals);
  const fraction = String(value % unit).padStart(decimals, "0");
  return `${value / unit}.${fraction}`.replace(/0+$/, "").replace(/\.$/, "");
}

/** A Unix time in milliseconds (BigInt) as `YYYY-MM-DDTHH:MM:SSZ`, UTC, for any u64. */
export function formatTime(ms) {
  const seconds = BigInt(ms) / 1000n;
  const z = seconds / 86400n + 719468n; // days since 0000-03-01 (H. Hinnant's civil_from_days)
  const era = z / 146097n;
  const doe = z - era * 146097n;
  const yoe = (doe - doe / 1460n + doe / 36524n - doe / 146096n) / 365n;
  const doy = doe - (365n * yoe + yoe / 4n - yoe / 100n);
  const mp = (5n * doy + 2n) / 153n;
  const day = doy - (153n * mp + 2n) / 5n + 1n;
  const month = mp < 10n ? mp + 3n : mp - 9n;
  const year = yoe + era * 400n + (month <= 2n ? 1n : 0n);
  const rest = seconds % 86400n;
  const two = (n) => String(n).padStart(2, "0");
  return (
    `${String(year).padStart(4, "0")}-${two(month)}-${two(day)}` +
    `T${two(rest / 3600n)}:${two((rest / 60n) % 60n)}:${two(rest % 60n)}Z`
  );
}
