import CohortCore
import Testing

@Suite struct RandomStreamTests {
  @Test func sameSeedSameStream() {
    var a = RandomStream(seed: 7, purpose: "x", round: 1, device: 2)
    var b = RandomStream(seed: 7, purpose: "x", round: 1, device: 2)
    for _ in 0..<100 { #expect(a.next() == b.next()) }
  }
}
