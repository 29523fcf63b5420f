import CohortCore
import Foundation

/// A checkpoint as either backend stores it (SHA-256, layout JSON, little-endian Float32 bytes),
/// checked before it is trusted: the same checks and messages for SQLite and PostgreSQL.
struct StoredCheckpoint: Sendable {
  var round: Int
  var sha256: String
  var layoutJSON: String
  var blob: Data

  /// The weights, once the bytes match their recorded SHA-256 and their layout.
  /// - Parameters:
  ///   - location: the store, for messages; `fix` says what to do about a damaged checkpoint.
  func verified(run: RunID, location: String, fix: String) throws(CohortError) -> (
    round: Int, weights: Weights
  ) {
    let what = "the checkpoint of round \(round) of run \(run) in \(location)"
    let actual = SHA256.hex(blob)
    guard actual == sha256 else {
      throw CohortError(
        .storage, "\(what) is corrupted: its SHA-256 is \(actual) but \(sha256) was recorded", fix: fix)
    }
    let layout = try Self.decodeLayout(layoutJSON, run: run, round: round, location: location)
    guard let values = Float32LittleEndian.values(blob), values.count == layout.count else {
      throw CohortError(
        .storage,
        "\(what) holds \(blob.count) bytes but its layout \(ResultsStore.describe(layout)) needs "
          + "\(layout.count * 4)", fix: fix)
    }
    return (round, Weights(layout: layout, values: values))
  }

  /// Decodes a stored layout and rebuilds it from its tensors, so offsets and count are never
  /// taken on trust from the store.
  static func decodeLayout(_ json: String, run: RunID, round: Int, location: String) throws(CohortError)
    -> WeightsLayout
  {
    let decoded = try StoreJSON.decode(
      WeightsLayout.self, from: Data(json.utf8),
      what: "the layout of the checkpoint of round \(round) of run \(run) in \(location)")
    return WeightsLayout(decoded.tensors)
  }
}
