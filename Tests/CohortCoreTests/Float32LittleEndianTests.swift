import CohortCore
import Foundation
import Testing

@Suite struct Float32LittleEndianTests {
  @Test func writesLittleEndianBinary32() {
    #expect(Float32LittleEndian.bytes([1, -2]) == [0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0])
    #expect(Float32LittleEndian.data([1]) == Data([0x00, 0x00, 0x80, 0x3F]))
    #expect(Float32LittleEndian.bytes([]) == [])
  }

  @Test func readsBackWhatItWrites() {
    let values: [Float] = [0, -0.0, 1.5, -3.25e-7, .greatestFiniteMagnitude, .infinity]
    #expect(Float32LittleEndian.values(Float32LittleEndian.bytes(values)) == values)
    #expect(Float32LittleEndian.values(Float32LittleEndian.data(values)) == values)
    #expect(Float32LittleEndian.values(Data()) == [])
  }

  @Test func refusesALengthThatIsNotAMultipleOfFour() {
    for count in [1, 2, 3, 5, 7] {
      #expect(Float32LittleEndian.values([UInt8](repeating: 0, count: count)) == nil)
    }
  }
}
