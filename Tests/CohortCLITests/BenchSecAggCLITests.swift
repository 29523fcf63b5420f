import Foundation
import Testing

@Suite struct BenchSecAggCLITests {
  /// A tiny grid: both graphs at 10% dropout, every unmasked sum exact, the figures present.
  @Test func smallRoundsAreExactAndReported() throws {
    let result = try cohort([
      "bench", "secagg", "--devices", "20", "--length", "100", "--dropout", "0.1", "--skip-large", "--json",
    ])
    #expect(result.status == 0, "\(result.stderr)")
    let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
    let rounds = object?["rounds"] as? [[String: Any]] ?? []
    #expect(rounds.count == 2, "\(result.stdout)")
    #expect(Set(rounds.compactMap { $0["graph"] as? String }) == ["complete", "harary"])
    for round in rounds {
      #expect(round["exact"] as? Bool == true, "\(round)")
      #expect(round["dropped"] as? Int == 2, "\(round)")
      #expect(round["survivors"] as? Int == 18, "\(round)")
      #expect((round["device_seconds_median"] as? Double ?? 0) > 0, "\(round)")
      #expect((round["server_seconds"] as? Double ?? 0) > 0, "\(round)")
      #expect((round["bytes_up_median"] as? Int ?? 0) > 400, "\(round)")
    }
  }

  @Test func aBadDropoutRateIsRefused() throws {
    let result = try cohort(["bench", "secagg", "--dropout", "1.5", "--skip-large"])
    #expect(result.status != 0)
    #expect(result.stderr.contains("--dropout"), "\(result.stderr)")
  }
}
