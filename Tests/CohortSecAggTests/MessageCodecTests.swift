import CohortCore
import Testing

@testable import CohortSecAgg

@Suite struct MessageCodecTests {
  @Test(arguments: [1, 7, 25, 32])
  func maskedInputsTravelInRingBits(bits: Int) throws {
    var random = RandomStream(seed: UInt64(bits), purpose: "codec-test")
    let mask: UInt32 = bits == 32 ? .max : (1 << UInt32(bits)) - 1
    let vector = (0..<1001).map { _ in UInt32(truncatingIfNeeded: random.next()) & mask }
    let message = SecAggMessage.maskedInput(MaskedInput(round: 3, sender: 9, vector: vector, ringBits: bits))
    let bytes = message.encoded
    #expect(bytes.count == message.byteCount, "bits \(bits)")
    #expect(bytes.count == 1 + 12 + 4 + 1 + (1001 * bits + 7) / 8)
    #expect(try SecAggMessage(decoding: bytes) == message, "bits \(bits)")
    // Cut short, or padded with a stray bit, it is refused.
    #expect(throws: SecAggDecodingError.truncated) { try SecAggMessage(decoding: Array(bytes.dropLast())) }
    if (1001 * bits) % 8 != 0 {
      var stray = bytes
      stray[stray.count - 1] |= 0x80
      #expect(throws: SecAggDecodingError.self) { try SecAggMessage(decoding: stray) }
    }
  }

  @Test func everyMessageRoundTrips() throws {
    let keys = AdvertiseKeys(
      round: 1, sender: 2, encryptionKey: [UInt8](repeating: 1, count: 32),
      maskingKey: [UInt8](repeating: 2, count: 32), signature: [3, 4])
    let share = RevealedShare(owner: 5, share: ShamirShare(index: 2, values: [1, 2, 3, 4, 5]))
    let messages: [SecAggMessage] = [
      .advertiseKeys(keys), .neighbourKeys(NeighbourKeys(round: 1, keys: [keys, keys])),
      .shareKeys(ShareKeys(round: 1, sender: 2, shares: [EncryptedShare(peer: 3, ciphertext: [9, 9, 9])])),
      .sharesForDevice(SharesForDevice(round: 1, shares: [EncryptedShare(peer: 4, ciphertext: [8])])),
      .maskedInput(MaskedInput(round: 1, sender: 2, vector: [1, 2, 3], ringBits: 20)),
      .consistencyRequest(SurvivorList(round: 1, survivors: [1, 2, 5])),
      .signedSurvivors(SignedSurvivors(round: 1, sender: 2, signature: [7, 7])),
      .unmaskRequest(
        SurvivorList(
          round: 1, survivors: [1, 2], signatures: [SignedSurvivors(round: 1, sender: 1, signature: [6])])),
      .unmaskResponse(
        UnmaskResponse(round: 1, sender: 2, selfMaskShares: [share], maskingKeyShares: [share])),
    ]
    for m in messages {
      #expect(m.encoded.count == m.byteCount, "\(m.kindName)")
      #expect(try SecAggMessage(decoding: m.encoded) == m, "\(m.kindName)")
    }
  }
}
