import asyncio
import socket

from meter.sockets import UDP_RECEIVE_BUFFER, enlarge_receive_buffer


def test_udp_receive_buffer_is_enlarged_beyond_the_kernel_default():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        sock = transport.get_extra_info("socket")
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = enlarge_receive_buffer(transport)
        transport.close()
        return before, granted

    before, granted = asyncio.run(scenario())
    # Linux doubles the request for bookkeeping and caps it at net.core.rmem_max: never below the default.
    assert granted >= before
    assert granted <= 2 * UDP_RECEIVE_BUFFER
